"""Training records: metrics.jsonl, the loss curve picture, and model FLOPs utilisation (MFU)."""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

from tinygpt.fileio import atomic_path
from tinygpt.model.gpt import GPTConfig

log = logging.getLogger(__name__)

# Dense (not sparse) 16-bit tensor-core peaks with fp32 accumulation, FLOP/s, from NVIDIA's data sheets (the
# sparse figures they also print are twice these). Keys are model names as `gpu_model` makes them from
# torch.cuda.get_device_name(); a GPU not listed gets no MFU rather than a wrong one.
PEAK_FLOPS = {
    "T4": 65e12,  # Tesla T4 data sheet: 65 TFLOPS mixed precision (fp16)
    "V100": 125e12, "V100 PCIE": 112e12,  # Tesla V100 data sheet: tensor performance SXM2 / PCIe
    "A100": 312e12, "A100 PCIE": 312e12,  # A100 data sheet: BF16 tensor core 312 (624 sparse)
    "L4": 121e12,  # L4 data sheet: BF16 242 with sparsity
    "L40": 181e12,  # L40 data sheet: BF16 362 with sparsity
    "L40S": 362e12,  # L40S data sheet: BF16 733 with sparsity
    "H100": 989e12, "H100 PCIE": 756e12, "H100 NVL": 835e12,  # H100 data sheet: SXM / PCIe / NVL (1,671 sparse)
    "H200": 989e12,  # H200 data sheet: SXM, 1,979 with sparsity
    "GH200": 989e12,  # GH200 data sheet: the H100-class GPU, 1,979 with sparsity
    "RTX 3090": 71e12,  # Ampere GA102 whitepaper: FP16 tensor with FP32 accumulate
    "RTX 4090": 165e12,  # Ada whitepaper: FP16/BF16 tensor with FP32 accumulate
}
_VENDOR_WORDS = {"NVIDIA", "TESLA", "GEFORCE", "QUADRO"}
_VARIANTS = ("PCIE", "NVL")


def gpu_model(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100', 'NVIDIA H100 PCIe' -> 'H100 PCIE', 'NVIDIA GeForce RTX 4090' ->
    'RTX 4090', 'Tesla V100-SXM2-16GB' -> 'V100': the model word (and a PCIe/NVL variant), never a substring."""
    words = [w for w in re.split(r"[\s\-_]+", device_name.upper()) if w and w not in _VENDOR_WORDS]
    if not words:
        return ""
    model = " ".join(words[:2]) if words[0] == "RTX" and len(words) > 1 else words[0]
    variant = next((v for v in _VARIANTS if v in words), "")
    return f"{model} {variant}" if variant and f"{model} {variant}" in PEAK_FLOPS else model


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """One GPU's tensor-core peak for 16-bit math, or None where unknown (CPU, MPS, fp32, unlisted GPUs)."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    return PEAK_FLOPS.get(gpu_model(torch.cuda.get_device_name(device)))


def mfu(job_tokens_per_sec: float, world_size: int, flops_per_tok: float, peak_per_gpu: float | None
        ) -> float | None:
    """Model FLOPs utilisation of each GPU: the job's tokens/s shared among its `world_size` GPUs."""
    if not peak_per_gpu:
        return None
    return job_tokens_per_sec / world_size * flops_per_tok / peak_per_gpu


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
