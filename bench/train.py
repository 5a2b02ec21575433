"""LoRA training throughput and peak memory: the project trainer against a plain PEFT loop.

One model (the embedded SmolLM2-135M-Instruct, float32, on the CPU), the same data (arithmetic
chat conversations generated here: short answers and worked ones), the same LoRA (r, alpha,
dropout 0.05, all linear layers), the same seed, the same batches:

* **baseline** — what a user writes with PEFT and torch: ``get_peft_model``, answer-only labels
  (the project's ``encode_conversation``, so both paths see the same tokens), right padding,
  ``model(input_ids=..., attention_mask=..., labels=...)``, ``loss.backward()``, grad clipping
  1.0, AdamW with the same linear warmup/decay schedule. Its batches are built exactly like the
  project's (sorted by length, chunked, the batch order shuffled with ``random.Random(seed)``),
  so padding is equal and only the training step differs.
* **project** — ``adapters.training.train_lora`` with the same settings: the decoder's hidden
  states go through ``lm_head`` at the answer positions only.

Each path runs in its own subprocess (``python -m bench.train --worker project|baseline``) so
its peak RSS (``ru_maxrss``) is its own, both pinned to ``--threads`` torch threads. Timed is
the optimisation loop (model load and adapter save excluded; they are reported apart).
Tokens are the non-pad tokens through the forward; equal counts on both paths show they
trained on the same batches, and the final losses (same seed: same LoRA init, same dropout
masks) show they computed the same thing. With ``--repeats`` the order of the paths
alternates and medians are compared.

    PYTHONPATH=. .venv/bin/python -m bench.train --json bench-train.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import TARGET_RATIO, log, machine, now, quiet, result_row, write_result

PATHS = ("baseline", "project")


# ----------------------------------------------------------------------- data
def conversations(n: int, seed: int) -> list[list[dict[str, str]]]:
    """``n`` arithmetic Q/A chats: every third answer worked step by step, the rest short."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = "+-*"[i % 3]
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        question = f"What is {a} {op} {b}?"
        if i % 3 == 2:
            answer = (
                f"Let's work it out. We need {a} {op} {b}. Split {b} into {b // 10 * 10} and "
                f"{b % 10}: {a} {op} {b // 10 * 10} and {a} {op} {b % 10}, then combine the "
                f"two parts. The result is {value}. So {a} {op} {b} = {value}."
            )
        else:
            answer = f"{a} {op} {b} = {value}."
        out.append(
            [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        )
    return out


def training_config(args: argparse.Namespace) -> Any:
    from adapters.training import TrainingConfig

    return TrainingConfig(
        r=args.r,
        alpha=args.alpha,
        dropout=0.05,
        target_modules="all-linear",
        learning_rate=2e-4,
        epochs=1,
        max_steps=args.steps,
        batch_size=args.batch,
        max_length=args.max_length,
        warmup_ratio=0.03,
        seed=args.seed,
    )


# -------------------------------------------------------------------- workers
def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker_project(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    from adapters.training import train_lora

    convs = conversations(args.samples, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train_lora(
            model_dir, convs, Path(tmp) / "adapter", training_config(args), threads=args.threads
        )
        total = time.perf_counter() - t0
    return {
        "seconds": result.seconds,
        "total_s": total,
        "tokens": result.tokens,
        "answer_tokens": result.answer_tokens,
        "steps": result.steps,
        "final_loss": result.final_loss,
    }


def worker_baseline(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    """The plain loop; the batches and schedule mirror the project's by construction."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    from adapters.training import encode_conversation

    cfg = training_config(args)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = [
        e
        for c in conversations(args.samples, args.seed)
        if (e := encode_conversation(tokenizer, c, cfg.max_length)) is not None
    ]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(cfg.seed)
    model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i][0]), i))
    chunks = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    batches = []
    for chunk in chunks:
        rows = [examples[i] for i in chunk]
        width = max(len(x) for x, _ in rows)
        pad = tokenizer.pad_token_id
        batches.append(
            {
                "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x, _ in rows]),
                "attention_mask": torch.tensor(
                    [[1] * len(x) + [0] * (width - len(x)) for x, _ in rows]
                ),
                "labels": torch.tensor([y + [-100] * (width - len(y)) for _, y in rows]),
            }
        )
    total_steps = cfg.max_steps if cfg.max_steps is not None else len(batches)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, round(cfg.warmup_ratio * total_steps), total_steps)
    rng = random.Random(cfg.seed)
    model.train()
    steps = tokens = answer_tokens = 0
    losses: list[float] = []
    t0 = time.perf_counter()
    while steps < total_steps:
        epoch = list(range(len(batches)))
        rng.shuffle(epoch)
        for b in epoch:
            if steps >= total_steps:
                break
            batch = batches[b]
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            steps += 1
            losses.append(loss.item())
            tokens += int(batch["attention_mask"].sum())
            answer_tokens += int((batch["labels"][:, 1:] != -100).sum())
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    tail = losses[-len(batches) :]
    return {
        "seconds": seconds,
        "total_s": time.perf_counter() - t_start,
        "tokens": tokens,
        "answer_tokens": answer_tokens,
        "steps": steps,
        "final_loss": sum(tail) / len(tail),
    }


def run_worker(args: argparse.Namespace) -> int:
    quiet()
    import torch

    from daemon.engines.model_files import resolve_model_dir

    torch.set_num_threads(args.threads)
    model_dir = resolve_model_dir("embedded")
    fn = worker_project if args.worker == "project" else worker_baseline
    out = fn(args, model_dir)
    out["tokens_per_s"] = out["tokens"] / out["seconds"]
    out["peak_rss_mib"] = peak_rss_mib()
    out["torch_threads"] = torch.get_num_threads()
    print(json.dumps(out))
    return 0


# ----------------------------------------------------------------------- main
def spawn(path: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.train",
        "--worker",
        path,
        "--samples",
        str(args.samples),
        "--batch",
        str(args.batch),
        "--max-length",
        str(args.max_length),
        "--r",
        str(args.r),
        "--alpha",
        str(args.alpha),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the {path} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
    ratios = []
    for rep in range(args.repeats):
        order = PATHS if rep % 2 == 0 else PATHS[::-1]
        for path in order:
            log(f"repeat {rep + 1}/{args.repeats}: {path} …")
            s = spawn(path, args)
            log(
                f"  {s['tokens']} tokens in {s['seconds']:.2f} s = {s['tokens_per_s']:.1f} "
                f"tokens/s, peak RSS {s['peak_rss_mib']:.0f} MiB, final loss {s['final_loss']:.4f}"
            )
            samples[path].append(s)
        ratios.append(
            samples["project"][-1]["tokens_per_s"] / samples["baseline"][-1]["tokens_per_s"]
        )

    def med(path: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[path])

    ratio = statistics.median(ratios)
    mem_ratio = med("project", "peak_rss_mib") / med("baseline", "peak_rss_mib")
    first = {p: samples[p][0] for p in PATHS}
    return {
        "model": "SmolLM2-135M-Instruct (embedded)",
        "tokens_per_s": {p: round(med(p, "tokens_per_s"), 2) for p in PATHS}
        | {"ratio": round(ratio, 3), "ratios": [round(r, 3) for r in ratios]},
        "peak_rss_mib": {p: round(med(p, "peak_rss_mib"), 1) for p in PATHS}
        | {"ratio": round(mem_ratio, 3)},
        "meets_target": ratio >= TARGET_RATIO,
        "same_tokens": all(
            (s["tokens"], s["answer_tokens"], s["steps"])
            == (
                first["baseline"]["tokens"],
                first["baseline"]["answer_tokens"],
                first["baseline"]["steps"],
            )
            for p in PATHS
            for s in samples[p]
        ),
        "final_loss": {p: round(first[p]["final_loss"], 5) for p in PATHS},
        "samples": samples,
    }


def render(results: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> str:
    t, m, s = results["tokens_per_s"], results["peak_rss_mib"], results["samples"]
    b0 = s["baseline"][0]
    lines = [
        f"LoRA SFT: {args.samples} conversations, r={args.r}, alpha={args.alpha}, all-linear, "
        f"batch {args.batch}, max_length {args.max_length}, "
        + (f"{args.steps} steps" if args.steps is not None else "1 epoch")
        + f" ({b0['steps']} steps, {b0['tokens']} tokens, {b0['answer_tokens']} answer tokens), "
        f"seed {args.seed}, {args.repeats} repeat(s)",
        f"model: {results['model']} (float32, cpu, torch threads {args.threads})",
        f"machine: {info['processor']}, nproc={info['nproc']}, python {info['python']}, "
        f"torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']} "
        f"({info['platform']})",
        "",
        "| path | tokens/s | loop s | load+train+save s | peak RSS MiB | final loss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in PATHS:
        lines.append(
            f"| {p} | {t[p]:.1f} | {statistics.median(x['seconds'] for x in s[p]):.2f} "
            f"| {statistics.median(x['total_s'] for x in s[p]):.2f} | {m[p]:.0f} "
            f"| {results['final_loss'][p]:.4f} |"
        )
    mark = "" if results["meets_target"] else " ✗"
    lines += [
        f"| ratio project/baseline | {t['ratio']:.2f}{mark} | | | {m['ratio']:.2f} | |",
        "",
        "tokens/s ratio: median of per-repeat ratios ("
        + ", ".join(f"{r:.2f}" for r in t["ratios"])
        + "); same batches and tokens on both paths: "
        + ("yes" if results["same_tokens"] else "NO"),
        f"target: tokens/s ratio ≥ {TARGET_RATIO} — "
        + ("met" if results["meets_target"] else "NOT met"),
    ]
    return "\n".join(lines)


def report_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Throughput and memory as bench.report's rows (``bench.common.result_row``)."""
    t, m, loss = results["tokens_per_s"], results["peak_rss_mib"], results["final_loss"]
    baseline = "plain PEFT + torch loop (model(labels=...), AdamW)"
    same = "same batches and tokens: " + ("yes" if results["same_tokens"] else "NO")
    return [
        result_row(
            "LoRA training: train_lora tokens/s",
            "tokens/s",
            baseline,
            t["baseline"],
            t["project"],
            ratio=t["ratio"],
            notes=f"{same}; final loss {loss['project']:.4f} vs {loss['baseline']:.4f}",
        ),
        result_row(
            "LoRA training: train_lora peak RSS",
            "MiB",
            baseline,
            m["baseline"],
            m["project"],
            ratio=m["ratio"],
            target=None,
            notes="each path in its own process (ru_maxrss); lower is better",
        ),
    ]


def report_conditions(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The run's sizes for bench.report."""
    b0 = results["samples"]["baseline"][0]
    return [
        f"{results['model']}: float32, cpu, torch threads {args.threads}",
        f"{args.samples} conversations, LoRA r={args.r} alpha={args.alpha} all-linear, "
        f"batch {args.batch}, max_length {args.max_length}, "
        + (f"{args.steps} steps" if args.steps is not None else "1 epoch")
        + f" ({b0['steps']} steps, {b0['tokens']} tokens), seed {args.seed}",
        f"{args.repeats} repeat(s), order alternating; medians reported",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=64, help="training conversations")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: one epoch)")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs; medians reported")
    ap.add_argument("--batch", type=int, default=8, help="batch size")
    ap.add_argument("--max-length", type=int, default=256, help="tokens per example")
    ap.add_argument("--r", type=int, default=16, help="LoRA rank")
    ap.add_argument("--alpha", type=int, default=32, help="LoRA alpha")
    ap.add_argument("--seed", type=int, default=0, help="seed for data, LoRA init, batches")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both paths (1 by default: the 2-core box is shared)",
    )
    ap.add_argument("--worker", choices=PATHS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if min(args.samples, args.repeats, args.batch, args.threads) < 1 or (
        args.steps is not None and args.steps < 1
    ):
        ap.error("--samples, --repeats, --batch, --threads and --steps must be positive")
    if args.worker is not None:
        return run_worker(args)

    started = now()
    quiet()
    import torch

    torch.set_num_threads(args.threads)
    info = machine("torch", "transformers", "peft")
    results = run_bench(args)
    print(render(results, args, info))
    write_result(
        args,
        "train",
        info,
        started,
        results,
        report_rows(results),
        report_conditions(results, args),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
