"""Training records: metrics.jsonl, the loss curve picture, and model FLOPs utilisation (MFU)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from tinygpt.fileio import atomic_path
from tinygpt.model import GPTConfig

log = logging.getLogger(__name__)

# Dense bf16/fp16 tensor-core peaks (FLOP/s) from the vendors' data sheets. Unknown GPU: no MFU.
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
              ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12), ("RTX 4090", 165e12),
              ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12)]


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The GPU's tensor-core peak for 16-bit math, or None where unknown (CPU, MPS, fp32, other GPUs)."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS if key in name), None)


def flops_per_token(num_params: int, config: GPTConfig) -> float:
    """Training FLOPs per token: 6N for the weights plus attention over the context (PaLM appendix B)."""
    return 6 * num_params + 12 * config.n_layer * config.n_embd * config.block_size


class MetricsLog:
    """Appends one JSON record per evaluation to metrics.jsonl and redraws loss.png."""

    def __init__(self, out_dir: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.png = Path(out_dir) / "loss.png"
        self.records: list[dict] = []
        if resume_step is not None and self.path.exists():  # keep what led up to the resumed step
            lines = self.path.read_text().splitlines()
            self.records = [r for r in map(json.loads, filter(None, lines)) if r["step"] <= resume_step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, record: dict) -> None:
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.plot()

    def plot(self) -> None:
        import matplotlib  # heavy; only where a picture is drawn

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tokens = [r["tokens_seen"] / 1e6 for r in self.records]
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(tokens, [r["train_loss"] for r in self.records], label="train", marker=".")
        ax.plot(tokens, [r["val_loss"] for r in self.records], label="val", marker=".")
        ax.set(xlabel="tokens seen (millions)", ylabel="loss (nats/token)", title="TinyGPT training")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(self.png) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
