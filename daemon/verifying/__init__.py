"""Verifying: each prompt's candidates judged, and what passes stored.

``worker`` reads ``candidates`` and writes the ``store``; ``cascade`` is where a candidate is
judged (``verdicts`` parses a judge's output, ``checkers`` and ``sandbox`` are the tool
stages, ``graders`` compare an answer with a reference); ``quality`` measures how good the
verifier itself is against labeled data.
"""
