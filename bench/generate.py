"""Single-stream generation speed on the CPU, ours against transformers' GPT-2 on the same weights.

    python bench/generate.py [--checkpoint out/best] [--val-bin data/tinystories/val.bin] [--compile]

One set of weights (the checkpoint, else random reference-size weights); prompt of 8 tokens, 120 new
tokens, top-k 50. Prints tokens/s for: no KV cache, our fp32 / bf16 / int8 (and torch.compile'd with
--compile), transformers `generate` fp32 and bf16 on the exported weights; then, for each reduced
precision, teacher-forced top-1 agreement with fp32 over 20 stories and (with --val-bin) the change in
validation loss. The last line is `ratio_vs_transformers_bf16: X` for the default CPU mode.
"""
import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinygpt import GPT, GPTConfig, Tokenizer, generate, load_checkpoint  # noqa: E402
from tinygpt.decode import DecodeStep  # noqa: E402
from tinygpt.export import export_transformers  # noqa: E402
from tinygpt.quantize import DEFAULT_CPU_PRECISION, for_serving  # noqa: E402
from tinygpt.sampling import sample_next  # noqa: E402

NEW, TOP_K = 120, 50
warnings.filterwarnings("ignore")


def best_rate(fn, reps: int) -> float:
    fn()  # warm-up
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def ours(model, tok, prompt):
    return lambda: sum(1 for _ in generate(model, tok, prompt, max_new_tokens=NEW, temperature=1.0,
                                           top_k=TOP_K, seed=0, stop_at_eot=False))


def no_cache(model, prompt):
    @torch.inference_mode()
    def run():
        ids, g = list(prompt), torch.Generator().manual_seed(0)
        for _ in range(NEW):
            logits, _ = model(torch.tensor([ids[-model.config.block_size:]]))
            ids.append(sample_next(logits[0, -1].float(), 1.0, TOP_K, 1.0, g))
        return NEW
    return run


def compiled_rates(served: dict, tok, prompt, reps: int) -> dict:
    """The per-token step under torch.compile, for each precision."""
    out, plain = {}, DecodeStep.__call__
    DecodeStep.__call__ = torch.compile(plain, dynamic=True)
    try:
        for name, m in served.items():
            try:
                out[f"ours {name} compiled"] = best_rate(ours(m, tok, prompt), reps)
            except Exception as e:  # inductor needs a C++ compiler; report rather than stop
                print(f"ours {name} compiled: failed ({type(e).__name__}: {str(e)[:200]})")
    finally:
        DecodeStep.__call__ = plain
    return out


def transformers_rate(folder, prompt, dtype, reps):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype).eval()
    ids = torch.tensor([prompt])

    @torch.inference_mode()
    def run():
        out = hf.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=True, top_k=TOP_K,
                          pad_token_id=50256)
        return out.size(1) - ids.size(1)
    return best_rate(run, reps)


def stories(tok, val_bin, n=20, block=128):
    """n stories (<= block tokens each) from the val memmap, else from shared valid.txt, else random."""
    if val_bin:
        data = np.memmap(val_bin, dtype=np.uint16, mode="r")
        ends = np.flatnonzero(data == tok.eot_id)[:n + 1]
        return [data[a + 1:b][:block].astype(np.int64).tolist() for a, b in zip(ends, ends[1:])][:n]
    txt = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories" / "valid.txt"
    if txt.exists():
        from tinygpt.sources import read_txt
        return [tok.encode(s)[:block] for _, s in zip(range(n), read_txt(txt))]
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 50257, (block,), generator=g).tolist() for _ in range(n)]


@torch.inference_mode()
def agreement(ref, model, seqs) -> float:
    same = total = 0
    for s in seqs:
        x = torch.tensor([s])
        a, b = ref(x)[0].argmax(-1), model(x)[0].float().argmax(-1)
        same, total = same + int((a == b).sum()), total + a.numel()
    return same / total


@torch.inference_mode()
def val_loss(model, val_bin, block, n=64) -> float:
    data = np.memmap(val_bin, dtype=np.uint16, mode="r")
    starts = np.linspace(0, len(data) - block - 2, n).astype(np.int64)
    xy = torch.from_numpy(np.stack([data[i:i + block + 1] for i in starts]).astype(np.int64))
    losses = [model(xy[i:i + 8, :-1])[0].float().log_softmax(-1).gather(-1, xy[i:i + 8, 1:, None]).mean()
              for i in range(0, n, 8)]
    return -float(torch.stack(losses).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a TinyGPT checkpoint directory (default: random reference weights)")
    p.add_argument("--val-bin", help="a val.bin memmap for agreement stories and the validation-loss change")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile'd decoding")
    p.add_argument("--reps", type=int, default=5, help="best of N runs per mode")
    args = p.parse_args()
    torch.manual_seed(0)
    model = load_checkpoint(args.checkpoint)[0] if args.checkpoint else GPT(GPTConfig()).eval()
    tok = Tokenizer()
    prompt = tok.encode("Once upon a time, there was a little girl who")[:8]
    print(f"weights: {args.checkpoint or 'random'} ({model.num_params() / 1e6:.1f}M), threads: "
          f"{torch.get_num_threads()}, prompt 8 tokens, {NEW} new, top-k {TOP_K}", flush=True)
    rates = {"no cache fp32": best_rate(no_cache(model, prompt), args.reps)}
    served = {p: for_serving(model, p) for p in ("fp32", "bf16", "int8", "int4")}
    for name, m in served.items():
        rates[f"ours {name}"] = best_rate(ours(m, tok, prompt), args.reps)
    with tempfile.TemporaryDirectory() as folder:
        export_transformers(model, folder)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            rates[f"transformers {name}"] = transformers_rate(folder, prompt, dtype, args.reps)
    if args.compile:  # last: compiling leaves worker threads and caches that slow what runs after it
        rates.update(compiled_rates(served, tok, prompt, args.reps))
    for name, rate in rates.items():
        print(f"{name:>24}: {rate:7.1f} tokens/s", flush=True)
    seqs, ref = stories(tok, args.val_bin, block=model.config.block_size), served["fp32"]
    base = val_loss(ref, args.val_bin, model.config.block_size) if args.val_bin else None
    for name in ("bf16", "int8", "int4"):
        line = f"{name}: top-1 agreement with fp32 {agreement(ref, served[name], seqs):.2%}"
        if base is not None:
            line += f", val loss change {val_loss(served[name], args.val_bin, model.config.block_size) - base:+.4f}"
        print(line + (f" (fp32 val loss {base:.4f})" if base is not None else ""))
    ratio = rates[f"ours {DEFAULT_CPU_PRECISION}"] / rates["transformers bf16"]
    print(f"default CPU mode: {DEFAULT_CPU_PRECISION}")
    print(f"ratio_vs_transformers_bf16: {ratio:.2f}")


if __name__ == "__main__":
    main()
