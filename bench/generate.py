"""Single-stream generation speed on the CPU, ours against transformers' GPT-2 on the same weights.

    python bench/generate.py [--checkpoint out/best] [--val-bin data/tinystories/val.bin] [--no-compile]

One set of weights (the checkpoint, else random reference-size weights); prompt of 8 tokens, 120 new
tokens, top-k 50, the playground's 5 alternatives per token. Tokens/s, best of --reps rounds, the modes
interleaved within each round: no KV cache; our engine in fp32 / bf16 / int8 / int4, the modules' decode step
eager and compiled, and the one-pass step where the copy takes it; transformers `generate` fp32 and bf16 on the
exported weights. Then, for each reduced precision, teacher-forced top-1 agreement with fp32 over --stories (20),
through the prompt's path and through each decode step, and (with --val-bin) the change in validation loss,
through the KV cache as serving runs. The last two lines: `default_tok_s: X` (what the playground serves by
default on a CPU: int4, one pass where it runs, else compiled) and `ratio_vs_transformers_bf16: Y`.
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
from tinygpt import GPT, GPTConfig, Tokenizer, load_checkpoint  # noqa: E402
from tinygpt.inference.engine import Engine  # noqa: E402
from tinygpt.inference.sampling import SamplingParams, choose_token, settings_tensor  # noqa: E402
from tinygpt.kernels.quantize import cache_dtype, default_precision, for_serving  # noqa: E402
from tinygpt.sharing.export import export_transformers  # noqa: E402

NEW, TOP_K = 120, 50
PARAMS = SamplingParams(temperature=1.0, top_k=TOP_K, top_p=1.0, max_new_tokens=NEW, seed=0, stop_at_eot=False,
                        alternatives=5)
warnings.filterwarnings("ignore")


def rate(fn) -> float:
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def ours(engine: Engine, prompt):
    return lambda: sum(1 for _ in engine.generate(prompt, PARAMS))


def no_cache(model, prompt):
    @torch.no_grad()
    def run():
        ids, g = list(prompt), torch.Generator().manual_seed(0)
        for _ in range(NEW):
            logits, _ = model(torch.tensor([ids[-model.config.block_size:]]))
            ids.append(int(choose_token(logits[:, -1].float(), PARAMS, torch.rand(1, generator=g))[0, 0]))
        return NEW
    return run


def transformers_run(folder, prompt, dtype):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    ids = torch.tensor([prompt])

    @torch.inference_mode()
    def run():
        out = hf.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=True, top_k=TOP_K,
                          pad_token_id=50256)
        return out.size(1) - ids.size(1)
    return run


def stories(tok, val_bin, n=20, block=128):
    """n stories (<= block tokens each) from the val memmap, else from shared valid.txt, else random."""
    if val_bin:
        data = np.memmap(val_bin, dtype=np.uint16, mode="r")
        ends = np.flatnonzero(data == tok.eot_id)[:n + 1]
        return [data[a + 1:b][:block].astype(np.int64).tolist() for a, b in zip(ends, ends[1:])][:n]
    txt = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories" / "valid.txt"
    if txt.exists():
        from tinygpt.data.sources import read_txt
        return [tok.encode(s)[:block] for _, s in zip(range(n), read_txt(txt))]
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 50257, (block,), generator=g).tolist() for _ in range(n)]


def cached_logits(model, x: torch.Tensor) -> torch.Tensor:
    """Every position's logits (B, T, vocab) through a KV cache, as serving computes them (the attention kernel
    and fp16 cache of an int8/int4 copy included): the prompt's prefill path, which attends over the cache."""
    h = model.hidden(x, model.new_cache(x.shape[0], cache_dtype(model)))
    return model.vocab_logits(model.lm_head(h)).float()


@torch.inference_mode()
def agreement(ref, model, seqs) -> float:
    same = total = 0
    for s in seqs:
        x = torch.tensor([s])
        a, b = cached_logits(ref, x).argmax(-1), cached_logits(model, x).argmax(-1)
        same, total = same + int((a == b).sum()), total + a.numel()
    return same / total


@torch.inference_mode()
def val_loss(model, val_bin, block, n=64) -> float:
    data = np.memmap(val_bin, dtype=np.uint16, mode="r")
    starts = np.linspace(0, len(data) - block - 2, n).astype(np.int64)
    xy = torch.from_numpy(np.stack([data[i:i + block + 1] for i in starts]).astype(np.int64))
    losses = [cached_logits(model, xy[i:i + 8, :-1]).log_softmax(-1).gather(-1, xy[i:i + 8, 1:, None]).mean()
              for i in range(0, n, 8)]
    return -float(torch.stack(losses).mean())


def decode_agreement(ref, engine: Engine, seqs) -> float:
    """Top-1 agreement with fp32 of the token the engine's decode step ranks first, one token at a time through
    its cache, each story's own next token forced in after each step (as a story is written, teacher-forced)."""
    same = total = 0
    for s in seqs:
        want, cache = cached_logits(ref, torch.tensor([s])).argmax(-1)[0], engine.new_cache(engine.padded_size(1))
        stream = engine.new_stream(s[:1], SamplingParams(temperature=0, max_new_tokens=len(s), stop_at_eot=False))
        for t in range(len(s) - 1):
            same += engine.advance(cache, [stream])[0].id == int(want[t])
            stream.context[-1] = s[t + 1]  # the story's token, not the one chosen, goes in next
        total += len(s) - 1
    return same / total


def report_quality(served: dict, steps: dict, tok: Tokenizer, val_bin: str | None, block: int, n: int) -> None:
    """Each reduced precision's top-1 agreement with fp32 over n stories (the prompt's path, then each of its
    decode steps in `steps`: {precision: {kind: engine}}) and, given a val.bin, its validation-loss change."""
    seqs, ref = stories(tok, val_bin, n, block), served["fp32"]
    base = val_loss(ref, val_bin, block) if val_bin else None
    for name in ("bf16", "int8", "int4"):
        line = f"{name}: top-1 agreement with fp32 {agreement(ref, served[name], seqs):.2%}"
        line += " (decode steps: " + ", ".join(f"{kind} {decode_agreement(ref, engine, seqs):.2%}"
                                               for kind, engine in steps[name].items()) + ")"
        if base is not None:
            line += f", val loss change {val_loss(served[name], val_bin, block) - base:+.4f}"
        print(line + (f" (fp32 val loss {base:.4f})" if base is not None else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a TinyGPT checkpoint directory (default: random reference weights)")
    p.add_argument("--val-bin", help="a val.bin memmap for agreement stories and the validation-loss change")
    p.add_argument("--reps", type=int, default=5, help="rounds; each mode's best round is reported")
    p.add_argument("--stories", type=int, default=20, help="stories for the top-1 agreement figures")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="no compiled rows (quick runs)")
    args = p.parse_args()
    torch.manual_seed(0)
    model = load_checkpoint(args.checkpoint)[0] if args.checkpoint else GPT(GPTConfig()).eval()
    if model.config.block_size < 8 + NEW:  # transformers' generate has no sliding window
        p.error(f"the model's context ({model.config.block_size}) must hold the 8-token prompt and {NEW} new tokens")
    tok = Tokenizer()
    prompt = tok.encode("Once upon a time, there was a little girl who")[:8]
    print(f"weights: {args.checkpoint or 'random'} ({model.num_params() / 1e6:.1f}M), threads: "
          f"{torch.get_num_threads()}, prompt 8 tokens, {NEW} new, top-k {TOP_K}, 5 alternatives", flush=True)
    served = {p: for_serving(model, p) for p in ("fp32", "bf16", "int8", "int4")}
    runs, steps = {"no cache fp32": no_cache(model, prompt)}, {}
    for name, m in served.items():
        runs[f"ours {name}"] = ours(Engine(m, one_pass=False), prompt)
    for name, m in served.items():
        engine = Engine(m, compile=args.compile, one_pass=False)
        steps[name] = {"the modules' compiled" if engine.compiled else "the modules' eager": engine}
        if engine.compiled:
            runs[f"ours {name} compiled"] = ours(engine, prompt)
        if (one_pass := Engine(m)).one_pass_step is not None:
            steps[name]["one pass"] = one_pass
            runs[f"ours {name} one pass"] = ours(one_pass, prompt)
    if model.config.kept_tokens:  # transformers' GPT-2 has a row per token id: no export, no comparison
        print("transformers: not run (a kept-token model cannot be exported to transformers)")
    else:
        folder = tempfile.mkdtemp()
        export_transformers(model, folder)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            runs[f"transformers {name}"] = transformers_run(folder, prompt, dtype)
    rates = {name: 0.0 for name in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(args.reps):  # interleaved: a slow spell of the machine hits every mode alike
        for name, fn in runs.items():
            rates[name] = max(rates[name], rate(fn))
    for name, r in rates.items():
        print(f"{name:>26}: {r:7.1f} tokens/s", flush=True)
    report_quality(served, steps, tok, args.val_bin, model.config.block_size, args.stories)
    precision = default_precision(torch.device("cpu"), model.config)
    step = next(s for s in ("one pass", "compiled", "") if f"ours {precision} {s}".strip() in rates)
    default = rates[f"ours {precision} {step}".strip()]
    print(f"default CPU mode: {precision}, the decode step {step or 'eager'}")
    print(f"default_tok_s: {default:.1f}")
    if "transformers bf16" in rates:
        print(f"ratio_vs_transformers_bf16: {default / rates['transformers bf16']:.2f}")


if __name__ == "__main__":
    main()
