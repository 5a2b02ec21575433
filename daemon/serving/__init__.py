"""Serving: prompts in, the production answer and the extra candidates out.

``worker`` is the serve worker (one Kafka transaction per batch), ``openai_server`` the
OpenAI-compatible endpoint beside it. The adapter a request runs on is ``engines.hotswap``'s.
"""
