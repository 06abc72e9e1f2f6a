"""Our CPU kernels (tinygpt.inference.kernels, kernels_*.cpp): the same numbers as their math written in plain torch,
row by row whatever the batch, and a clean fallback to PyTorch's kernels where they cannot be built."""
import logging
import shutil
import subprocess
import sys

import pytest
import torch

from tinygpt.inference import kernels
from tinygpt.inference.quantize import Int4Linear, Int8Linear, WeightOnlyInt8Linear, for_serving

needs_kernels = pytest.mark.skipif(kernels.unsupported() is not None or not kernels.load(),
                                   reason=f"our kernels do not run here: {kernels.unsupported()}")
# each kernel in both weight layouts: 4-row blocks (AVX2, VNNI) and AMX tiles, where this CPU has them
LAYOUTS = [False, pytest.param(True, marks=pytest.mark.skipif(
    kernels.unsupported() is not None or not kernels.amx(), reason="this CPU has no AMX"), id="amx")]


def _quantized_rows(x):
    """Each row of x as int8 codes and its scale, as the kernel rounds them (x * 127/amax, half to even)."""
    amax = x.abs().amax(1, keepdim=True)
    q = (x * torch.where(amax > 0, 127.0 / amax, 0.0)).round()
    return q.double(), (amax / 127.0).double()


def _reference_int8(layer, x):
    """Int8Linear's math in float64: unpack the 4-row blocks (or 16-row tiles), integer dot products, both
    scales, the bias."""
    rows, k = layer.packed.shape
    if layer.amx:
        w = layer.packed.view(rows // 16, k // 4, 16, 4).transpose(1, 2).reshape(rows, k).double()
    else:
        w = layer.packed.view(rows // 4, k // 32, 4, 32).transpose(1, 2).reshape(rows, k).double()
    q, sx = _quantized_rows(x)
    y = (q @ w.T) * sx * layer.scales.double() + (0 if layer.bias is None else layer.bias.double())
    return y[:, :layer.out_features]


def _reference_int4(layer, x):
    """Int4Linear's math in float64: unpack nibbles and blocks (or tiles), then code * scale + offset per group
    of 64."""
    rows, k = layer.codes.shape[0], layer.in_features
    if layer.amx:  # per tile and group: 8 runs of 16 rows x 4 codes, runs i and i + 8 in a byte's two nibbles
        runs = layer.codes.view(rows // 16, k // 64, 8, 16, 4).long()
        runs = torch.cat([runs & 15, runs >> 4], 2)
        codes = runs.permute(0, 3, 1, 2, 4).reshape(rows, k // 64, 64).double()
        pairs = layer.scales.double().view(rows // 16, k // 64, 2, 16).permute(0, 3, 1, 2).reshape(rows, k // 64, 2)
    else:
        codes = layer.codes.view(rows // 4, k // 64, 4, 32).transpose(1, 2).reshape(rows, k // 64, 32).long()
        codes = torch.stack([codes & 15, codes >> 4], 2).view(rows, k // 64, 64).double()
        pairs = layer.scales.double().view(rows // 4, k // 64, 2, 4).permute(0, 3, 1, 2).reshape(rows, k // 64, 2)
    w = (codes * pairs[..., :1] + pairs[..., 1:]).view(rows, k)
    q, sx = _quantized_rows(x)
    return ((q @ w.T) * sx)[:, :layer.out_features]


@needs_kernels
@pytest.mark.parametrize("amx", LAYOUTS)
@pytest.mark.parametrize("out_features, bias, rows", [(96, True, 5), (50, True, 2), (37, False, 20)])
def test_int8_kernel_computes_its_math_and_stays_near_the_float_layer(out_features, bias, rows, amx):
    """Catches a wrong block layout or nibble order (the float layer drifts away), a scale applied twice or a lost
    bias (the reference disagrees), and padding rows leaking into the output (odd widths). AMX: a few rows take
    VNNI on the tile layout, more take the tiles, 20 a second tile of rows."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, out_features, bias=bias)
    layer = Int8Linear(linear, amx=amx)
    assert layer.amx == amx
    x = torch.randn(rows, 64)
    x[rows // 2] = 0.0  # a row of zeros has no scale: it must give the bias, not NaN
    y = layer(x)
    assert y.shape == (rows, out_features) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), _reference_int8(layer, x), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        ref = linear(x)
    assert (y - ref).norm() <= 0.02 * ref.norm()


@needs_kernels
@pytest.mark.parametrize("amx", LAYOUTS)
@pytest.mark.parametrize("out_features, rows, k", [(128, 7, 128), (41, 3, 128), (41, 2, 320), (70, 20, 320)])
def test_int4_kernel_computes_its_math_and_stays_near_the_float_layer(out_features, rows, k, amx):
    """Rows in fours, then a pair, then one (blocks); 2-3 rows by VNNI, 7 in one tile, 20 in two (AMX); five
    groups: a last batch of one in flight on the tiles."""
    torch.manual_seed(0)
    weight = torch.randn(out_features, k) * 0.05
    layer = Int4Linear(weight, amx=amx)
    x = torch.randn(rows, k)
    y = layer(x)
    assert y.shape == (rows, out_features)
    torch.testing.assert_close(y.double(), _reference_int4(layer, x), rtol=1e-4, atol=1e-5)
    ref = x @ weight.T
    assert (y - ref).norm() <= 0.12 * ref.norm()  # 4-bit weights: about 8% on random normals


@needs_kernels
@pytest.mark.parametrize("amx", LAYOUTS)
@pytest.mark.parametrize("make", [lambda amx: Int8Linear(torch.nn.Linear(64, 96), amx=amx),
                                  lambda amx: Int4Linear(torch.randn(96, 64), amx=amx)])
def test_a_row_gets_the_same_bits_alone_and_in_a_batch(make, amx):
    """A seeded story must not change when other users share its decode step: rows never mix (one scale per
    row, integer sums, the same order of float operations whatever the batch size). With AMX a lone row takes
    VNNI and a batch the tiles: a different float order in one of them would fail here."""
    torch.manual_seed(1)
    layer, x = make(amx), torch.randn(20, 64)
    batched = layer(x)
    assert all(torch.equal(batched[i], layer(x[i:i + 1])[0]) for i in range(20))
    assert all(torch.equal(batched[i:i + 2], layer(x[i:i + 2])) for i in range(0, 20, 2))


@needs_kernels
@pytest.mark.skipif(kernels.unsupported() is not None or not kernels.amx(), reason="this CPU has no AMX")
def test_the_amx_int8_kernel_gives_the_other_kernels_bits():
    """Exact int32 sums and the same float steps: the tile layout must not change a served model's numbers."""
    torch.manual_seed(2)
    linear = torch.nn.Linear(384, 200)
    blocks, tiles = Int8Linear(linear, amx=False), Int8Linear(linear, amx=True)
    for rows in (1, 3, 16, 40):
        x = torch.randn(rows, 384)
        assert torch.equal(blocks(x), tiles(x))


@needs_kernels
def test_kernels_run_inside_a_compiled_step():
    """torch.compile must trace them (the registered output shapes) and call them from its C++ wrapper."""
    layer = Int8Linear(torch.nn.Linear(64, 96))
    fn = torch.compile(lambda x: torch.relu(layer(x)) + 1, fullgraph=True, options={"cpp_wrapper": True})
    x = torch.randn(2, 3, 64)
    torch.testing.assert_close(fn(x), torch.relu(layer(x)) + 1)


def test_serving_falls_back_to_pytorch_kernels_without_ours(tiny_model, monkeypatch):
    """Where our kernels cannot be built (an ARM laptop, no compiler), int8 serving still works: torch's
    weight-only kernel, the model in bf16."""
    monkeypatch.setattr(kernels, "load", lambda: False)
    served = for_serving(tiny_model, "int8")
    assert isinstance(served.transformer.h[0].mlp.c_fc, WeightOnlyInt8Linear)
    assert served.transformer.wpe.weight.dtype == torch.bfloat16
    x = torch.randint(0, 50257, (1, 8))
    with torch.no_grad():
        assert (served(x)[0].float() - tiny_model(x)[0]).abs().max() < 0.05


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_a_failed_build_is_reported_and_served_around(monkeypatch, caplog, tmp_path):
    """A compiler error must not take the app down: load() logs it and returns False."""
    with pytest.raises(subprocess.SubprocessError, match="failed"):
        monkeypatch.setattr(kernels.tempfile, "gettempdir", lambda: str(tmp_path))
        monkeypatch.setattr(kernels, "SOURCES", (tmp_path / "broken.cpp",))
        (tmp_path / "broken.cpp").write_text("this is not C++")
        kernels._build("c++", kernels.FLAGS)
    assert not [p for p in tmp_path.rglob("*") if p.suffix != ".cpp" and p.is_file()]  # nothing half-written

    def broken(compiler, flags):
        raise subprocess.SubprocessError("c++ failed: error: boom")

    monkeypatch.setattr(kernels, "_build", broken)
    monkeypatch.setattr(kernels, "unsupported", lambda: None)
    with caplog.at_level(logging.WARNING, logger="tinygpt.inference.kernels"):
        assert kernels._load.__wrapped__() is None
    assert "boom" in caplog.text and "PyTorch's kernels serve instead" in caplog.text


@needs_kernels
@pytest.mark.parametrize("rows, n, k", [(1, 50257, 200), (3, 1000, 50), (2, 7, 7), (1, 10, 3)])
def test_topk_gives_torch_topk_answer(rows, n, k):
    """Catches a lost candidate where a lone row is split between two threads and merged, a wrong order, or
    indices relative to a half. Distinct values: the same values and indices as torch.topk."""
    torch.manual_seed(0)
    x = torch.randn(rows, n) * 3
    values, indices = kernels.topk(x, k)
    ref = x.topk(k)
    assert torch.equal(values, ref.values) and torch.equal(indices, ref.indices)


@needs_kernels
def test_topk_breaks_ties_by_the_lower_index():
    """Ties (a model's shared rows, repeated logits) must come out in one fixed order, whatever the batch: the
    lower index first, also across the two halves of a split row."""
    x = torch.zeros(1, 1000)
    x[0, [900, 3, 500, 2]] = 1.0
    values, indices = kernels.topk(x, 6)
    assert indices.tolist() == [[2, 3, 500, 900, 0, 1]] and values.tolist() == [[1, 1, 1, 1, 0, 0]]
    batched = kernels.topk(torch.cat([x, torch.randn(2, 1000)]), 6)
    assert torch.equal(batched[1][:1], indices)


def test_vnni_flags_follow_the_cpu():
    """Catches a VNNI flag for a CPU without it (the library would die on an illegal instruction), or the 512-bit
    kernels (or AMX's) asked for without every part they use."""
    avx512 = ("-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni")
    amx = "flags : fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx_vnni amx_tile amx_int8"
    assert kernels.vnni_flags(amx) == avx512 + ("-mamx-tile", "-mamx-int8")
    assert kernels.vnni_flags(amx.replace(" amx_int8", "")) == avx512
    assert kernels.vnni_flags("flags : fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx_vnni") == avx512
    assert kernels.vnni_flags("flags : fma avx2 avx512f avx512dq avx512vl avx512_vnni avx_vnni") == ("-mavxvnni",)
    assert kernels.vnni_flags("flags : fma avx2 avx512f avx512dq avx512bw avx512vl") == ()
    assert kernels.vnni_flags("flags : fma avx2") == ()


def test_a_compiler_without_vnni_gets_the_avx2_build(monkeypatch):
    """Catches an older compiler that rejects -mamx-int8 or -mavxvnni leaving the machine without our kernels at
    all: each instruction set the CPU has is tried, best first, then plain AVX2."""
    tried = []

    def build(compiler, flags):
        tried.append(flags)
        if "-mavxvnni" in flags or "-mamx-int8" in flags:
            raise subprocess.SubprocessError("c++ failed: unrecognized command-line option")
        return kernels.Path("kernels.so")

    monkeypatch.setattr(kernels, "_build", build)
    monkeypatch.setattr(kernels, "_vnni_choices", lambda: [("-mavxvnni",)])
    assert kernels._build_for_this_cpu("c++") == kernels.Path("kernels.so")
    assert tried == [kernels.FLAGS + ("-mavxvnni",), kernels.FLAGS]
    tried.clear()
    monkeypatch.setattr(kernels, "_vnni_choices", lambda: [("-mamx-int8",), ("-mavx512vnni",)])
    assert kernels._build_for_this_cpu("c++") == kernels.Path("kernels.so")
    assert tried == [kernels.FLAGS + ("-mamx-int8",), kernels.FLAGS + ("-mavx512vnni",)]


def _cache_attention_case(B, T, nh, hs, L, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(B, T, 3 * nh * hs)  # q as the model has it: a strided slice of c_attn's output
    q = x[..., :nh * hs].view(B, T, nh, hs).transpose(1, 2)
    k, v = torch.randn(B, nh, L, hs) * 2, torch.randn(B, nh, L, hs)
    positions = torch.randint(0, L - T + 1, (B, 1)) + torch.arange(T)
    return q, k, v, positions


@needs_kernels
@pytest.mark.parametrize("B, T, nh, hs, L", [(1, 1, 6, 64, 128), (3, 5, 4, 16, 40), (2, 1, 2, 8, 9)])
def test_cache_attention_is_the_math_backend_over_the_allowed_slots(B, T, nh, hs, L):
    """Catches an off-by-one at the last allowed slot (a query must see its own key), a slot past its position
    leaking in, heads or queries read from the wrong offsets of the strided q, or a softmax tail handled apart
    from the 8-wide loop (lengths that are not multiples of 8)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, positions = _cache_attention_case(B, T, nh, hs, L)
    mask = (torch.arange(L) <= positions[:, :, None])[:, None]
    with sdpa_kernel(SDPBackend.MATH):
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    y = kernels.cache_attention(q, k, v, positions)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-6)


@needs_kernels
def test_cache_attention_reads_an_fp16_cache():
    """Catches fp16 keys and values read as floats (garbage) or converted wrongly."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, positions = _cache_attention_case(3, 2, 6, 64, 50)
    k, v = k.half(), v.half()
    mask = (torch.arange(50) <= positions[:, :, None])[:, None]
    with sdpa_kernel(SDPBackend.MATH):
        ref = torch.nn.functional.scaled_dot_product_attention(q, k.float(), v.float(), attn_mask=mask)
    torch.testing.assert_close(kernels.cache_attention(q, k, v, positions), ref, rtol=1e-5, atol=2e-6)


@needs_kernels
def test_cache_attention_gives_a_stream_the_same_bits_in_any_batch():
    q, k, v, positions = _cache_attention_case(5, 1, 6, 64, 128)
    batched = kernels.cache_attention(q, k, v, positions)
    assert all(torch.equal(batched[i], kernels.cache_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1],
                                                               positions[i:i + 1])[0]) for i in range(5))


@needs_kernels
def test_serving_copies_use_the_attention_kernel_and_decode_as_before(tiny_model):
    """int8/int4 copies get KernelAttention in every block and an fp16 cache; their prefill and decode logits
    stay those of the same copy with PyTorch's math attention over the same fp16 keys and values."""
    from tinygpt.inference.quantize import KernelAttention
    from tinygpt.model.gpt import CachedAttention

    class MathOverFp16(CachedAttention):
        cache_dtype = torch.float16

        def forward(self, q, k, v, mask, positions):
            return super().forward(q, k.float(), v.float(), mask, positions)

    served = for_serving(tiny_model, "int4")
    assert all(isinstance(b.attn.cached, KernelAttention) for b in served.transformer.h)
    assert served.new_cache(2).layers[0].k.dtype == torch.float16
    plain = for_serving(tiny_model, "int4")
    for block in plain.transformer.h:
        block.attn.cached = MathOverFp16()
    ids = torch.randint(0, 50257, (2, 9))
    with torch.no_grad():
        outs = []
        for model in (served, plain):
            cache = model.new_cache(2)
            outs.append(torch.cat([model(ids[:, :8], cache=cache)[0], model(ids[:, 8:], cache=cache)[0]], 1))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)


BUILD_OUTPUTS = """
import sys, torch
from tinygpt.inference import kernels, quantize
kernels.vnni_flags = lambda *a: tuple(sys.argv[1].split())
assert kernels.load()
torch.manual_seed(0)
int8, int4 = quantize.Int8Linear(torch.nn.Linear(384, 1536)), quantize.Int4Linear(torch.randn(1000, 384) * 0.05)
x = torch.randn(7, 384)
torch.save({"int8": int8(x), "int4": int4(x)}, sys.argv[2])
"""


@needs_kernels
@pytest.mark.slow
@pytest.mark.skipif(not kernels.vnni_flags(), reason="this CPU has no VNNI")
def test_the_vnni_build_gives_the_avx2_builds_bits(tmp_path):
    """Catches a VNNI or 512-bit path whose sums or float steps differ from the AVX2 code's: the same weights
    would then give other stories on another machine, and the kernels' exactness claims would be false. Each
    build in its own process (one library per process). The AMX build's int4 sums each group's products in
    int32 before its float step (the others: 8 columns at a time), so its logits may differ in the last bits."""
    builds = [""] + [" ".join(flags) for flags in kernels._vnni_choices()]
    outputs = []
    for i, flags in enumerate(builds):
        out = tmp_path / f"{i}.pt"
        subprocess.run([sys.executable, "-c", BUILD_OUTPUTS, flags, str(out)], check=True, timeout=300)
        outputs.append(torch.load(out))
    for flags, output in zip(builds[1:], outputs[1:]):
        assert torch.equal(outputs[0]["int8"], output["int8"]), flags
        if "-mamx-int8" in flags:
            torch.testing.assert_close(outputs[0]["int4"], output["int4"], rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(outputs[0]["int4"], output["int4"]), flags
