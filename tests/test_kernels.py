"""Our CPU kernels (tinygpt.kernels, kernels_*.cpp): the same numbers as their math written in plain torch,
row by row whatever the batch, a clean fallback to PyTorch's kernels where they cannot be built, and a cache that
never loads a library someone else could have written. Nothing here builds them at collection: the
`built_kernels` fixture does, in the first test that needs them."""
import logging
import shutil
import subprocess
import sys

import pytest
import torch

from tinygpt import kernels
from tinygpt.kernels.quantize import Int4Linear, Int8Linear, WeightOnlyInt8Linear, for_serving


@pytest.fixture(scope="session")
def built_kernels() -> None:
    if kernels.unsupported() is not None or not kernels.load():
        pytest.skip(f"our kernels do not run here: {kernels.unsupported() or 'the build failed'}")


needs_kernels = pytest.mark.usefixtures("built_kernels")
LAYOUTS = [False, pytest.param(True, id="amx")]  # each kernel in both weight layouts: 4-row blocks and AMX tiles


def layout(amx: bool) -> bool:
    """`amx`, skipping the test where the tiles cannot run (asked inside a test: asking builds the kernels)."""
    if amx and not kernels.amx():
        pytest.skip("this CPU has no AMX")
    return amx


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
    layer = Int8Linear(linear, amx=layout(amx))
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
    layer = Int4Linear(weight, amx=layout(amx))
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
    layer, x = make(layout(amx)), torch.randn(20, 64)
    batched = layer(x)
    assert all(torch.equal(batched[i], layer(x[i:i + 1])[0]) for i in range(20))
    assert all(torch.equal(batched[i:i + 2], layer(x[i:i + 2])) for i in range(0, 20, 2))


@needs_kernels
def test_the_amx_int8_kernel_gives_the_other_kernels_bits():
    """Exact int32 sums and the same float steps: the tile layout must not change a served model's numbers."""
    layout(True)
    torch.manual_seed(2)
    linear = torch.nn.Linear(384, 200)
    blocks, tiles = Int8Linear(linear, amx=False), Int8Linear(linear, amx=True)
    for rows in (1, 3, 16, 40):
        x = torch.randn(rows, 384)
        assert torch.equal(blocks(x), tiles(x))


@needs_kernels
@pytest.mark.slow
def test_kernels_run_inside_a_compiled_step():
    """torch.compile must trace them (the registered output shapes) and call them from its C++ wrapper."""
    layer = Int8Linear(torch.nn.Linear(64, 96))
    fn = torch.compile(lambda x: torch.relu(layer(x)) + 1, fullgraph=True, options={"cpp_wrapper": True})
    x = torch.randn(2, 3, 64)
    torch.testing.assert_close(fn(x), torch.relu(layer(x)) + 1)


def test_serving_falls_back_to_pytorch_kernels_without_ours(tiny_model, monkeypatch):
    """Where our kernels cannot be built (an ARM laptop, no compiler), int8 serving still works: torch's
    weight-only kernel, the model in bf16."""
    monkeypatch.setattr(kernels, "load", lambda *a, **kw: False)
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
        monkeypatch.setattr(kernels, "SOURCES", (tmp_path / "broken.cpp",))
        (tmp_path / "broken.cpp").write_text("this is not C++")
        kernels.build("c++", kernels.FLAGS, tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").rglob("*")]  # nothing half-written

    def broken(compiler, flags, cache_dir):
        raise subprocess.SubprocessError("c++ failed: error: boom")

    monkeypatch.setattr(kernels, "build", broken)
    monkeypatch.setattr(kernels, "unsupported", lambda: None)
    with caplog.at_level(logging.WARNING, logger="tinygpt.kernels"):
        assert kernels.build_and_load(tmp_path / "cache") is None
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


# gcc's name for each instruction set a build turns on, and the name Linux lists it under in /proc/cpuinfo
CPUINFO_NAME = {"-mavx512f": "avx512f", "-mavx512bw": "avx512bw", "-mavx512dq": "avx512dq", "-mavx512vl": "avx512vl",
                "-mavx512vnni": "avx512_vnni", "-mamx-tile": "amx_tile", "-mamx-int8": "amx_int8",
                "-mavxvnni": "avx_vnni"}


def test_a_build_is_chosen_only_for_cpus_that_list_every_instruction_set_it_uses():
    """Catches a build entry whose compiler flags turn on an instruction set its CPU test does not ask for: on a
    CPU without it the library would die on an illegal instruction."""
    for needs, flags in kernels.BUILDS:
        assert {CPUINFO_NAME[f] for f in flags} <= set(needs), flags
        cpu = "flags : fma avx2 " + " ".join(needs)
        assert flags in kernels.build_choices(cpu)
        for missing in needs:
            assert flags not in kernels.build_choices(cpu.replace(f" {missing}", "")), (flags, missing)
    assert kernels.build_choices("flags : fma avx2") == []


def test_a_compiler_without_vnni_gets_the_avx2_build(monkeypatch):
    """Catches an older compiler that rejects -mamx-int8 or -mavxvnni leaving the machine without our kernels at
    all: each instruction set the CPU has is tried, best first, then plain AVX2."""
    tried = []

    def build(compiler, flags, cache_dir):
        tried.append(flags)
        if "-mavxvnni" in flags or "-mamx-int8" in flags:
            raise subprocess.SubprocessError("c++ failed: unrecognized command-line option")
        return kernels.Path("kernels.so")

    monkeypatch.setattr(kernels, "build", build)
    monkeypatch.setattr(kernels, "build_choices", lambda: [("-mavxvnni",)])
    assert kernels._build_for_this_cpu("c++", kernels.Path("cache")) == kernels.Path("kernels.so")
    assert tried == [kernels.FLAGS + ("-mavxvnni",), kernels.FLAGS]
    tried.clear()
    monkeypatch.setattr(kernels, "build_choices", lambda: [("-mamx-int8",), ("-mavx512vnni",)])
    assert kernels._build_for_this_cpu("c++", kernels.Path("cache")) == kernels.Path("kernels.so")
    assert tried == [kernels.FLAGS + ("-mamx-int8",), kernels.FLAGS + ("-mavx512vnni",)]


def _cache_attention_case(B, T, nh, hs, L, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(B, T, 3 * nh * hs)  # q as the model has it: a strided slice of c_attn's output
    q = x[..., :nh * hs].view(B, T, nh, hs).transpose(1, 2)
    k, v = torch.randn(B, nh, L, hs) * 2, torch.randn(B, nh, L, hs)
    positions = torch.randint(0, L - T + 1, (B, 1)) + torch.arange(T)
    return q, k, v, positions


@needs_kernels
@pytest.mark.parametrize("B, T, nh, hs, L", [(1, 1, 6, 64, 128), (3, 5, 4, 16, 40), (2, 1, 2, 8, 9),
                                            (2, 1, 4, 64, 512)])
def test_cache_attention_is_the_math_backend_over_the_allowed_slots(B, T, nh, hs, L):
    """Catches an off-by-one at the last allowed slot (a query must see its own key), a slot past its position
    leaking in, heads or queries read from the wrong offsets of the strided q, or a softmax tail handled apart
    from the 8-wide loop (lengths that are not multiples of 8), or scratch sized for a short window (512 slots)."""
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
    from tinygpt.inference.engine import Engine
    from tinygpt.kernels.quantize import KernelAttention
    from tinygpt.model.gpt import CachedAttention

    class MathOverFp16(CachedAttention):
        def forward(self, q, k, v, mask):
            return super().forward(q, k.float(), v.float(), mask)

    served = for_serving(tiny_model, "int4")
    assert all(isinstance(b.attn.cached, KernelAttention) for b in served.transformer.h)
    assert Engine(served).new_cache(2).layers[0].k.dtype == torch.float16
    plain = for_serving(tiny_model, "int4")
    for block in plain.transformer.h:
        block.attn.cached = MathOverFp16()
    ids = torch.randint(0, 50257, (2, 9))
    with torch.no_grad():
        outs = []
        for model in (served, plain):
            cache = model.new_cache(2, torch.float16)
            outs.append(torch.cat([model(ids[:, :8], cache=cache)[0], model(ids[:, 8:], cache=cache)[0]], 1))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)


BUILD_OUTPUTS = """
import sys, torch
from tinygpt import kernels
from tinygpt.kernels import quantize
kernels.build_choices = lambda *a: [tuple(sys.argv[1].split())] if sys.argv[1] else []
assert kernels.load()
torch.manual_seed(0)
int8, int4 = quantize.Int8Linear(torch.nn.Linear(384, 1536)), quantize.Int4Linear(torch.randn(1000, 384) * 0.05)
x = torch.randn(7, 384)
torch.save({"int8": int8(x), "int4": int4(x)}, sys.argv[2])
"""


@needs_kernels
@pytest.mark.slow
@pytest.mark.skipif(not kernels.build_choices(), reason="this CPU has no VNNI")
def test_the_vnni_build_gives_the_avx2_builds_bits(tmp_path):
    """Catches a VNNI or 512-bit path whose sums or float steps differ from the AVX2 code's: the same weights
    would then give other stories on another machine, and the kernels' exactness claims would be false. Each
    build in its own process (one library per process). The AMX build's int4 sums each group's products in
    int32 before its float step (the others: 8 columns at a time), so its logits may differ in the last bits."""
    builds = [""] + [" ".join(flags) for flags in kernels.build_choices()]
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


PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("the planted library ran", f); fclose(f); }
}
"""
LOAD = "import sys; from tinygpt import kernels; print('loaded' if kernels.load() else 'refused')"


def plant(path, marker):
    """A library at `path` that, if anything ever loads it, writes `marker`: what an attacker would leave."""
    src = path.parent / "planted.c"
    src.write_text(PLANTED)
    subprocess.run(["cc", "-shared", "-fPIC", f'-DMARKER="{marker}"', str(src), "-o", str(path)], check=True)
    src.unlink()


def load_in_a_new_process(cache_home, tmp_path):
    env = {**__import__("os").environ, "XDG_CACHE_HOME": str(cache_home)}
    r = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, env=env, timeout=300,
                       cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    return r.stdout.strip(), r.stderr


def names_this_cpu_builds(compiler, cache_dir):
    return [kernels.library_path(compiler, kernels.FLAGS + extra, cache_dir)
            for extra in [*kernels.build_choices(), ()]]


@needs_kernels
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_a_library_planted_in_the_old_tmp_cache_is_never_loaded(tmp_path):
    """Catches the build cache moving back to the predictable, world-writable $TMPDIR/tinygpt-kernels-<uid>:
    anyone could plant kernels-<hash>.so there (the hash comes from public inputs) and run code in the app."""
    import hashlib
    import os
    import tempfile

    old = __import__("pathlib").Path(tempfile.gettempdir()) / f"tinygpt-kernels-{os.getuid()}"
    old.mkdir(exist_ok=True)
    source = b"".join(path.read_bytes() for path in kernels.SOURCES + kernels.HEADERS)
    marker = tmp_path / "ran"
    planted = []
    for extra in [*kernels.build_choices(), ()]:  # the names the old code would have loaded
        key = hashlib.sha256(source + " ".join(kernels.FLAGS + extra).encode() + torch.__version__.encode())
        path = old / f"kernels-{key.hexdigest()[:16]}.so"
        if not path.exists():
            plant(path, marker)
            planted.append(path)
    try:
        out, err = load_in_a_new_process(kernels.default_cache_dir().parents[1], tmp_path)
        assert out == "loaded", err
        assert not marker.exists()
    finally:
        for path in planted:
            path.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["owned by another user", "writable by others"])
@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("c++") is None, reason="no C compiler")
@pytest.mark.skipif(kernels.unsupported() is not None, reason="our kernels do not run here")
def test_a_cache_folder_someone_else_could_write_is_never_loaded_from(how, tmp_path):
    """Catches a cache folder (or library) taken on trust: owned by another user, or open to every user's
    writes, it may hold a library with any code in it under exactly the name the loader asks for."""
    import os

    if how == "owned by another user" and os.getuid() != 0:
        pytest.skip("only root can give a folder to another user")
    cache = tmp_path / "cache" / "tinygpt" / "kernels"
    cache.mkdir(parents=True)
    marker = tmp_path / "ran"
    compiler = shutil.which("c++") or shutil.which("g++")
    for path in names_this_cpu_builds(compiler, cache):
        plant(path, marker)
    if how == "owned by another user":
        os.chown(cache, 65534, 65534)
    else:
        cache.chmod(0o777)
    out, err = load_in_a_new_process(tmp_path / "cache", tmp_path)
    assert out == "refused" and how in err, err
    assert not marker.exists()


WHEEL_BUILD = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from tinygpt import kernels
assert Path(kernels.__file__).is_relative_to(sys.argv[1]), kernels.__file__
assert kernels.load(Path(sys.argv[2])), "the kernels did not build from the installed package"
print("built", *sorted(p.name for p in Path(sys.argv[2]).iterdir()))
"""


@pytest.mark.slow
@pytest.mark.skipif(kernels.unsupported() is not None, reason="our kernels do not run here")
def test_the_kernels_build_from_an_installed_wheel(tmp_path):
    """Catches a wheel without the kernels' sources or headers (`pip install .` would then silently serve with
    PyTorch's kernels): build the wheel, install it into an empty folder, build the kernels from there."""
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(".git", "out", "data", "__pycache__", ".venv",
                                                                "build", "*.egg-info", "tests", "bench"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")],
                   check=True, timeout=300)
    wheel, = (tmp_path / "dist").glob("tinygpt-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True,
                   timeout=300)
    r = subprocess.run([sys.executable, "-c", WHEEL_BUILD, str(tmp_path / "site"), str(tmp_path / "cache")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("built kernels-"), r.stderr[-2000:]
