import json
import logging
import os
import random
import subprocess
import time
import sys

import numpy as np
import pytest

import prepare_data
from tinygpt.data.dataloader import TokenDataset

WORDS = "once upon a time there was little girl named Lily she loved to play in the park with her dog Max " \
        "café naïve 小猫 🐶 happy sad big red ball tree sun".split()


def make_stories(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))).capitalize() + "." for _ in range(n)]


def write_txt(path, stories):
    path.write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories), encoding="utf-8")
    return path


def run(tmp_path, *args):
    return prepare_data.main([*map(str, args), "--out-dir", str(tmp_path / "out")])


@pytest.fixture
def stories():
    return make_stories(300)


def test_txt_jsonl_parquet_give_identical_tokens(tmp_path, stories, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    val = write_txt(tmp_path / "val.txt", make_stories(20, seed=1))
    txt = write_txt(tmp_path / "s.txt", stories)
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s, "id": i}) + "\n" for i, s in enumerate(stories)))
    parquet = tmp_path / "s.parquet"
    pq.write_table(pa.table({"text": stories}), parquet)
    outputs = []
    for src in (txt, jsonl, parquet):
        assert run(tmp_path, "--train-files", src, "--val-files", val, "--force") == 0
        outputs.append(np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16))
    assert np.array_equal(outputs[0], outputs[1]) and np.array_equal(outputs[0], outputs[2])
    decoded = tokenizer.decode(outputs[0].tolist())
    assert decoded == "".join(s + "<|endoftext|>" for s in stories)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["train"] == {"stories": 300, "tokens": len(outputs[0])}
    assert meta["val"]["stories"] == 20 and meta["tokenizer"]["name"] == "gpt2"
    assert sorted(os.listdir(tmp_path / "out")) == ["copies.json", "copies.safetensors", "meta.json", "train.bin",
                                                    "val.bin"]


def test_val_fraction_carves_a_split(tmp_path, stories, tokenizer):
    assert run(tmp_path, "--train-files", write_txt(tmp_path / "s.txt", stories), "--val-fraction", "0.1") == 0
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["val"]["stories"] == 30 and meta["train"]["stories"] == 270


def test_rerun_skips_unless_forced(tmp_path, stories, caplog):
    caplog.set_level(logging.INFO)
    args = ("--train-files", write_txt(tmp_path / "s.txt", stories), "--val-fraction", "0.1")
    assert run(tmp_path, *args) == 0
    before = (tmp_path / "out" / "train.bin").stat().st_mtime_ns
    caplog.clear()
    assert run(tmp_path, *args) == 0
    assert "up to date" in caplog.text
    assert (tmp_path / "out" / "train.bin").stat().st_mtime_ns == before
    index = tmp_path / "out" / "copies.safetensors"
    stamp = index.stat().st_mtime_ns
    assert run(tmp_path, *args) == 0 and index.stat().st_mtime_ns == stamp  # the copy index is kept too
    index.unlink()  # a data folder from before the copy index: a rerun adds it, the tokens stay
    assert run(tmp_path, *args) == 0 and index.is_file()
    assert (tmp_path / "out" / "train.bin").stat().st_mtime_ns == before
    assert run(tmp_path, *args, "--force") == 0
    assert (tmp_path / "out" / "train.bin").stat().st_mtime_ns != before


def bad_utf8(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"A good story.\n<|endoftext|>\nA bad \xff story.\n<|endoftext|>\n")
    return p


def jsonl_without_text(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "fine"}\n{"story": "no text field"}\n')
    return p


def empty(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("")
    return p


def unknown_ext(tmp_path):
    p = tmp_path / "stories.csv"
    p.write_text("text\nhello\n")
    return p


@pytest.mark.parametrize("make, message", [
    (lambda t: t / "missing.txt", "missing.txt: no such file"),
    (empty, "empty.txt: no stories found"),
    (bad_utf8, "bad.txt: not valid UTF-8 at byte offset 34"),
    (jsonl_without_text, "x.jsonl:2: no 'text' field"),
    (unknown_ext, "stories.csv: unknown extension '.csv'"),
])
def test_bad_input_exits_2_with_a_clear_message_and_no_outputs(tmp_path, capsys, make, message):
    assert run(tmp_path, "--train-files", make(tmp_path), "--val-fraction", "0.5") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_errors_replace_reports_every_bad_sequence_once_at_the_end(tmp_path, caplog):
    """Catches a report of only the first bad sequence in a line, or one per read (the file is read twice to
    carve out validation), or one in the middle of the progress bar instead of after it."""
    p = tmp_path / "bad2.txt"
    p.write_bytes(b"A good story.\n<|endoftext|>\nA bad \xff story with \xfe\xfe two.\n<|endoftext|>\n")
    caplog.set_level(logging.INFO)
    assert run(tmp_path, "--train-files", p, "--val-fraction", "0.5", "--errors", "replace") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"replaced 3 invalid UTF-8 sequences with U+FFFD: {p} at byte offsets 34, 47, 48"]
    messages = [r.getMessage() for r in caplog.records]
    assert messages.index(warnings[0]) > max(i for i, m in enumerate(messages) if m.startswith("val: "))  # at the end
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["utf8_replaced"] == 3


def test_outputs_follow_the_umask(tmp_path, stories):
    """Catches meta.json written 0600 through a temporary file (unreadable to others on a shared machine)."""
    old = os.umask(0o022)
    try:
        assert run(tmp_path, "--train-files", write_txt(tmp_path / "s.txt", stories), "--val-fraction", "0.5") == 0
    finally:
        os.umask(old)
    for name in ("meta.json", "train.bin", "val.bin"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o644, name


def test_offline_hub_fails_fast_with_the_way_out(tmp_path, capsys):
    """No network and no cache: a clear message within seconds, not half a minute of retries."""
    start = time.time()
    code = prepare_data.main(["--out-dir", str(tmp_path / "o"), "--offline", "--dataset", "nobody/no-such-set"])
    assert code == 2 and time.time() - start < 5
    err = capsys.readouterr().err
    assert "not in the local cache" in err and "--train-files" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_dir(tmp_path, stories, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = prepare_data.main(["--train-files", str(write_txt(tmp_path / "s.txt", stories)),
                              "--out-dir", str(locked / "out")])
    assert code == 2 and "cannot write there" in capsys.readouterr().err


def test_out_dir_that_is_a_file_is_refused(tmp_path, stories, capsys):
    (tmp_path / "afile").write_text("x")
    code = prepare_data.main(["--train-files", str(write_txt(tmp_path / "s.txt", stories)),
                              "--out-dir", str(tmp_path / "afile" / "out")])
    assert code == 2 and "cannot write there" in capsys.readouterr().err


def test_failed_rerun_leaves_previous_outputs_intact(tmp_path, stories):
    good = write_txt(tmp_path / "s.txt", stories)
    assert run(tmp_path, "--train-files", good, "--val-fraction", "0.1") == 0
    before = {p: (tmp_path / "out" / p).read_bytes() for p in ("train.bin", "val.bin", "meta.json")}
    with open(good, "ab") as f:  # a bad story late in the file: fails mid-run, after some tokens were written
        f.write(b"broken \xfe\n<|endoftext|>\n")
    assert run(tmp_path, "--train-files", good, "--val-fraction", "0.1") == 2
    assert {p: (tmp_path / "out" / p).read_bytes() for p in before} == before
    assert sorted(os.listdir(tmp_path / "out")) == ["copies.json", "copies.safetensors", "meta.json", "train.bin",
                                                    "val.bin"]


def test_offline_hub_gives_a_clear_message(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "prepare_data.py", "--out-dir", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "could not load 'roneneldan/TinyStories'" in r.stderr and "--train-files" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_dataset_batches_are_shifted_windows(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    import torch
    ds = TokenDataset(path, block_size=16)
    x, y = ds.random_batch(4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, 0], x[:, 0] + 1)
    a, b = ds.fixed_batches(2, 4), ds.fixed_batches(2, 4)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
