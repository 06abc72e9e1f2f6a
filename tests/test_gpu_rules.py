"""What the code decides on GPUs, with the device's properties faked (no GPU needed): precision by what the
hardware runs natively, MFU against the right peak and per GPU, serving precision that the device can run,
and optimizer settings that follow the device on resume."""
import pytest
import torch

from tinygpt.device import pick_dtype
from tinygpt.kernels.quantize import PRECISIONS, servable_precision
from tinygpt.training.metrics import PEAK_FLOPS, gpu_model, mfu, peak_flops

CUDA = torch.device("cuda")


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend torch sees one CUDA GPU with the given name and compute capability."""
    def install(name: str = "Tesla T4", capability: tuple[int, int] = (7, 5)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what emulation says on a T4
    return install


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                               ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_training_dtype_is_what_the_gpu_runs_natively(fake_gpu, capability, dtype):
    """Catches bf16 chosen on a T4/V100 because is_bf16_supported() counts emulation."""
    fake_gpu(capability=capability)
    assert pick_dtype(CUDA) == dtype  # (the Trainer enables its GradScaler exactly for float16)


@pytest.mark.parametrize("name, peak", [("NVIDIA L40", 181e12), ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12),
                                        ("NVIDIA H100 NVL", 835e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA GH200 480GB", 989e12),
                                        ("NVIDIA H200", 989e12), ("Tesla T4", 65e12),
                                        ("NVIDIA A100-SXM4-80GB", 312e12), ("Tesla V100-PCIE-16GB", 112e12),
                                        ("NVIDIA GeForce RTX 4090", 165e12)])
def test_each_gpu_gets_its_own_peak(fake_gpu, name, peak):
    """Catches substring matching: 'L40' taking L4's figure, 'H100 NVL' the SXM one, 'GH200' the H200's."""
    fake_gpu(name=name, capability=(8, 0))
    assert peak_flops(CUDA, torch.bfloat16) == peak


@pytest.mark.parametrize("name", ["NVIDIA A10G", "NVIDIA B200", "AMD Instinct MI300X", "NVIDIA RTX A6000", ""])
def test_unknown_gpus_get_no_mfu(fake_gpu, name):
    fake_gpu(name=name, capability=(8, 6))
    assert peak_flops(CUDA, torch.bfloat16) is None


def test_peak_table_keys_are_what_gpu_model_can_return():
    for key in PEAK_FLOPS:
        assert gpu_model(f"NVIDIA {key}") == key


def test_mfu_is_per_gpu_whatever_the_world_size():
    """Catches the job's tokens/s divided by one GPU's peak (MFU x world_size under DDP)."""
    per_gpu_rate, flops, peak = 50_000.0, 6 * 30e6, 312e12
    one = mfu(per_gpu_rate, 1, flops, peak)
    assert mfu(2 * per_gpu_rate, 2, flops, peak) == pytest.approx(one)
    assert mfu(8 * per_gpu_rate, 8, flops, peak) == pytest.approx(one)
    assert mfu(per_gpu_rate, 1, flops, None) is None


@pytest.mark.parametrize("requested", PRECISIONS)
@pytest.mark.parametrize("capability, native", [((7, 5), "fp16"), ((8, 0), "bf16")])
def test_serving_precision_is_one_the_gpu_runs(fake_gpu, requested, capability, native):
    """int4/int8 use CPU kernels: on a GPU they fall back (with a reason to log) instead of crashing the app."""
    fake_gpu(capability=capability)
    precision, why = servable_precision(requested, CUDA)
    assert precision in ("fp32", "fp16", "bf16")
    if requested in ("int8", "int4") or (requested == "bf16" and native == "fp16"):
        assert precision == native and why
    else:
        assert precision == requested and why is None
    assert servable_precision(None, CUDA) == (native, None)


def test_serving_precision_on_the_cpu_is_as_asked():
    for requested in PRECISIONS:
        assert servable_precision(requested, torch.device("cpu")) == (requested, None)
    assert servable_precision(None, torch.device("cpu"))[0] == "int4"  # with our kernels or PyTorch's


def test_a_data_vocab_model_is_served_in_int8_on_the_cpu():
    """Catches the shipped model (a head over 10,267 kept tokens) served with a 4-bit head: no faster there, and
    +0.012 in val loss. A full-vocabulary head still gets int4, and an explicit choice is kept."""
    from tinygpt import GPTConfig

    cpu = torch.device("cpu")
    assert servable_precision(None, cpu, GPTConfig(kept_tokens=10266))[0] == "int8"
    assert servable_precision(None, cpu, GPTConfig())[0] == "int4"
    assert servable_precision("int4", cpu, GPTConfig(kept_tokens=10266)) == ("int4", None)
    with pytest.raises(ValueError, match="precision must be one of"):
        servable_precision("fp8", torch.device("cpu"))


def test_resumed_optimizer_takes_the_new_devices_settings(tiny_model):
    """Catches the saved `fused` flag winning: a run started on a CPU and resumed on a GPU kept the slow path."""
    from tinygpt.training.optim import make_optimizer, optimizer_from_flat, optimizer_to_flat

    cpu_opt = make_optimizer(tiny_model, 0.1, 1e-3, (0.9, 0.95), "cpu")
    tiny_model(torch.randint(0, 50257, (1, 8)), torch.randint(0, 50257, (1, 8)))[1].backward()
    cpu_opt.step()
    tensors, rest = optimizer_to_flat(cpu_opt)
    assert rest["param_groups"][0]["fused"] is False
    gpu_opt = make_optimizer(tiny_model, 0.1, 1e-3, (0.9, 0.95), "cuda")  # fused=True (also valid on a CPU)
    optimizer_from_flat(gpu_opt, tensors, rest)
    assert all(g["fused"] for g in gpu_opt.param_groups)
    assert gpu_opt.state_dict()["state"][0]["step"] == 1  # the state itself was restored


def test_the_app_asked_for_int4_on_a_gpu_serves_in_what_the_gpu_runs(fake_gpu, monkeypatch, tmp_path, tokenizer,
                                                                      caplog):
    """Catches the start-up crash: int4 uses CPU kernels, so on a (faked) T4 the app must load in fp16, say so
    once, and generate. The weights stay on the CPU here; everything else takes the CUDA path."""
    from tinygpt.serving import loading
    from tests.conftest import TINY
    from tinygpt import GPT, save_checkpoint
    from tinygpt.inference.sampling import SamplingParams
    from tinygpt.inference.story import stream_story

    fake_gpu(name="Tesla T4", capability=(7, 5))
    ckpt = save_checkpoint(GPT(TINY), tmp_path / "best")
    real_load = loading.from_pretrained
    monkeypatch.setattr(loading, "from_pretrained", lambda source, device: real_load(source, "cpu"))
    with caplog.at_level("WARNING"):
        loaded = loading.load_for_serving(str(ckpt), device=CUDA, precision="int4")
    assert loaded.precision == "fp16" and loaded.model.lm_head.weight.dtype == torch.float16
    assert "int4 uses CPU kernels; serving fp16 on cuda instead" in caplog.text
    snaps = list(stream_story(loaded.engine, tokenizer, "Once", SamplingParams(max_new_tokens=3, seed=0)))
    assert snaps[-1].n_tokens == 3
