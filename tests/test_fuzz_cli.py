"""Fuzz suite: malformed manifests, audio, checkpoints, specs and output folders against every verb.

Cases are generated, not hand-listed one by one: a handful of *defects* per input kind, crossed with every
verb that reads that input.  Every case runs the real CLI in-process (typer's CliRunner) and must end with

* an exit code != 0,
* exactly one output line, ``error: ...``, naming the file, row, key or flag at fault (the case says which
  text it must contain),
* no "Traceback",
* no file created outside the case's ``--out`` (the case folder is snapshotted before and after; the
  working directory is the case folder, so stray relative writes are seen too),
* no partial output: ``--out`` holds no file afterwards (and no staging folder).

``manifest check`` is the one verb whose job is to list problems: there every case must exit 1 and print a
line naming the 1-based row (or the file).  Run with ``-s`` for the per-verb table of cases.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from typer.testing import CliRunner

from sharpscope.cli import app
from tests.conftest import TINY_AASIST, write_corpus, write_tiny_checkpoint

runner = CliRunner()
TALLY: Counter[tuple[str, str]] = Counter()

# ---- shared, valid inputs (built once) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzzbase")
    write_corpus(root, "c", n=2, seed=0, dur=0.25)
    write_tiny_checkpoint(root / "m.safetensors", 0)
    from tests.synthetic import example_results

    (root / "run").mkdir()
    example_results(n_ckpt=3, seed=0).to_parquet(root / "run" / "results.parquet")
    ids = [f"c_b{i}" for i in range(2)] + [f"c_s{i}" for i in range(2)]
    (root / "scores.csv").write_text(
        "utt_id,score\n" + "".join(f"{u},{i * 0.5}\n" for i, u in enumerate(ids))
    )
    return root


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    verbs = sorted({v for v, _ in TALLY})
    print("\n\nfuzz cases per verb (clear error = exit != 0, one line naming the culprit, no traceback)")
    print(f"{'verb':<16}{'cases':>7}{'clear':>7}")
    for v in verbs:
        print(f"{v:<16}{TALLY[v, 'cases']:>7}{TALLY[v, 'clear']:>7}")
    print(
        f"{'total':<16}{sum(TALLY[v, 'cases'] for v in verbs):>7}{sum(TALLY[v, 'clear'] for v in verbs):>7}"
    )


# ---- defect generators: each returns (path to pass, text the error must contain) ---------------------------

GOOD_ROWS = "utt_id,path,label\n"


def _manifest_text(base: Path) -> str:
    return (base / "c.csv").read_text()


MANIFEST_DEFECTS: dict[str, Callable[[Path, Path], tuple[str, str]]] = {}


def manifest_defect(fn: Callable[[Path, Path], tuple[str, str]]) -> Callable[[Path, Path], tuple[str, str]]:
    MANIFEST_DEFECTS[fn.__name__] = fn
    return fn


def _write(p: Path, data: str | bytes) -> Path:
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data)
    return p


@manifest_defect
def empty_file(d: Path, b: Path) -> tuple[str, str]:
    return str(_write(d / "m.csv", "")), "m.csv"


@manifest_defect
def header_only(d: Path, b: Path) -> tuple[str, str]:
    return str(_write(d / "m.csv", GOOD_ROWS)), "m.csv"


@manifest_defect
def missing_label_column(d: Path, b: Path) -> tuple[str, str]:
    lines = _manifest_text(b).splitlines()
    text = "\n".join(",".join(ln.split(",")[:2] + ln.split(",")[3:]) for ln in lines) + "\n"
    return str(_write(d / "m.csv", text)), "'label'"


@manifest_defect
def numeric_labels(d: Path, b: Path) -> tuple[str, str]:
    text = _manifest_text(b).replace(",bonafide,", ",1,").replace(",spoof,", ",0,")
    return str(_write(d / "m.csv", text)), "row 1"


@manifest_defect
def empty_label(d: Path, b: Path) -> tuple[str, str]:
    text = _manifest_text(b).replace(",spoof,", ",,", 1)
    return str(_write(d / "m.csv", text)), "row 2"


@manifest_defect
def duplicate_utt_id(d: Path, b: Path) -> tuple[str, str]:
    text = _manifest_text(b).replace("c_s0,", "c_b0,", 1)
    return str(_write(d / "m.csv", text)), "row 2"


@manifest_defect
def duplicate_header_column(d: Path, b: Path) -> tuple[str, str]:
    lines = _manifest_text(b).splitlines()
    text = "\n".join([lines[0] + ",label"] + [ln + ",spoof" for ln in lines[1:]]) + "\n"
    return str(_write(d / "m.csv", text)), "'label' twice"


@manifest_defect
def extra_field(d: Path, b: Path) -> tuple[str, str]:
    lines = _manifest_text(b).splitlines()
    lines[2] += ",surplus"
    return str(_write(d / "m.csv", "\n".join(lines) + "\n")), "line 3"


@manifest_defect
def not_utf8(d: Path, b: Path) -> tuple[str, str]:
    data = _manifest_text(b).encode().replace(b"c_b1", b"c_\xff\xfe", 1)
    return str(_write(d / "m.csv", data)), "m.csv"


@manifest_defect
def unknown_suffix(d: Path, b: Path) -> tuple[str, str]:
    return str(_write(d / "m.txt", _manifest_text(b))), "m.txt"


@manifest_defect
def garbage_parquet(d: Path, b: Path) -> tuple[str, str]:
    return str(_write(d / "m.parquet", b"PAR1 not really parquet")), "m.parquet"


@manifest_defect
def bad_sample_rate(d: Path, b: Path) -> tuple[str, str]:
    lines = _manifest_text(b).splitlines()
    text = "\n".join([lines[0] + ",sample_rate"] + [ln + ",abc" for ln in lines[1:]]) + "\n"
    return str(_write(d / "m.csv", text)), "row 1"


@manifest_defect
def missing_file(d: Path, b: Path) -> tuple[str, str]:
    return str(d / "nowhere.csv"), "nowhere.csv"


@manifest_defect
def invalid_label_word(d: Path, b: Path) -> tuple[str, str]:
    text = _manifest_text(b).replace(",spoof,", ",maybe,", 1)
    return str(_write(d / "m.csv", text)), "row 2"


# audio defects: the manifest is fine, one audio file is not
AUDIO_DEFECTS: dict[str, Callable[[Path, Path], tuple[str, str]]] = {}


def _one_bad_audio(d: Path, b: Path, data: bytes | None, what: str) -> tuple[str, str]:
    text = _manifest_text(b)
    bad = d / "bad.wav"
    if data is not None:
        bad.write_bytes(data)
    first_path = text.splitlines()[1].split(",")[1]
    return str(_write(d / "m.csv", text.replace(first_path, str(bad)))), what


AUDIO_DEFECTS["audio_missing"] = lambda d, b: _one_bad_audio(d, b, None, "bad.wav")
AUDIO_DEFECTS["audio_garbage"] = lambda d, b: _one_bad_audio(d, b, b"RIFF\0\0\0\0WAVEjunk" * 3, "bad.wav")
AUDIO_DEFECTS["audio_empty_file"] = lambda d, b: _one_bad_audio(d, b, b"", "bad.wav")


def _nan_wav(d: Path, b: Path) -> tuple[str, str]:
    x = np.zeros(4000, dtype=np.float32)
    x[3] = np.nan
    sf.write(d / "nan_src.wav", x, 16000, subtype="FLOAT")
    return _one_bad_audio(d, b, (d / "nan_src.wav").read_bytes(), "bad.wav")


AUDIO_DEFECTS["audio_nan_samples"] = _nan_wav


def _zero_frames(d: Path, b: Path) -> tuple[str, str]:
    sf.write(d / "z.wav", np.zeros(0, dtype=np.float32), 16000)
    return _one_bad_audio(d, b, (d / "z.wav").read_bytes(), "bad.wav")


AUDIO_DEFECTS["audio_zero_frames"] = _zero_frames


# checkpoint defects: (path, arch option or None, expected text)
CKPT_DEFECTS: dict[str, Callable[[Path, Path], tuple[str, str]]] = {}


def ckpt_defect(fn):
    CKPT_DEFECTS[fn.__name__] = fn
    return fn


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@ckpt_defect
def ckpt_missing(d: Path, b: Path) -> tuple[str, str]:
    return str(d / "none.pth"), "none.pth"


@ckpt_defect
def ckpt_empty(d: Path, b: Path) -> tuple[str, str]:
    return str(_write(d / "e.pth", b"")), "e.pth"


@ckpt_defect
def ckpt_random_bytes(d: Path, b: Path) -> tuple[str, str]:
    return str(_write(d / "r.pth", bytes(range(256)) * 4)), "r.pth"


@ckpt_defect
def ckpt_pickle_payload(d: Path, b: Path) -> tuple[str, str]:
    torch.save({"model": _Payload(str(d / "out" / "PWNED"))}, d / "p.pth")
    return str(d / "p.pth"), "--trust-checkpoint"


@ckpt_defect
def ckpt_truncated_safetensors(d: Path, b: Path) -> tuple[str, str]:
    data = (b / "m.safetensors").read_bytes()
    return str(_write(d / "t.safetensors", data[: len(data) // 2])), "t.safetensors"


@ckpt_defect
def ckpt_header_not_json(d: Path, b: Path) -> tuple[str, str]:
    data = (b / "m.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = b"{" + b"x" * (n - 1)
    return str(_write(d / "h.safetensors", data[:8] + header + data[8 + n :])), "h.safetensors"


@ckpt_defect
def ckpt_header_cfg_not_json(d: Path, b: Path) -> tuple[str, str]:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(d / "c.safetensors"), metadata={"sharpscope.model_cfg": "{no"})
    return str(d / "c.safetensors"), "sharpscope.model_cfg"


@ckpt_defect
def ckpt_wrong_shapes(d: Path, b: Path) -> tuple[str, str]:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(d / "s.safetensors"))
    return str(d / "s.safetensors"), "s.safetensors"


@ckpt_defect
def ckpt_list_not_state_dict(d: Path, b: Path) -> tuple[str, str]:
    torch.save([1, 2, 3], d / "l.pth")
    return str(d / "l.pth"), "l.pth"


@ckpt_defect
def ckpt_dict_without_tensors(d: Path, b: Path) -> tuple[str, str]:
    torch.save({"epoch": 3, "lr": 0.1}, d / "n.pth")
    return str(d / "n.pth"), "n.pth"


def _sidecar(d: Path, b: Path, edit: Callable[[dict], None] | str) -> tuple[str, str]:
    ck = d / "k.safetensors"
    ck.write_bytes((b / "m.safetensors").read_bytes())
    side = json.loads((b / "m.json").read_text())
    if isinstance(edit, str):
        (d / "k.json").write_text(edit)
    else:
        edit(side)
        (d / "k.json").write_text(json.dumps(side))
    return str(ck), "k.json"


CKPT_DEFECTS["ckpt_sidecar_cfg_list"] = lambda d, b: _sidecar(d, b, lambda s: s.update(model_cfg=[1, 2]))
CKPT_DEFECTS["ckpt_sidecar_cfg_types"] = lambda d, b: (
    _sidecar(d, b, lambda s: s["model_cfg"].update(gat_dims="wide"))[0],
    "k.safetensors",
)
CKPT_DEFECTS["ckpt_sidecar_not_json"] = lambda d, b: _sidecar(d, b, "{not json")
CKPT_DEFECTS["ckpt_sidecar_arch_number"] = lambda d, b: _sidecar(d, b, lambda s: s.update(arch=7))
CKPT_DEFECTS["ckpt_sidecar_huge_dim"] = lambda d, b: _sidecar(
    d, b, lambda s: s["model_cfg"].update(first_conv=10**12)
)


def _lora(d: Path, b: Path, drop: str | None, base_weights: str | None) -> tuple[str, str]:
    ld = d / "lora"
    ld.mkdir()
    (ld / "adapter_config.json").write_text("{}")
    side = {
        "format": "sharpscope-lora/1",
        "arch": "ssl-linear",
        "ssl_config": {},
        "base_fingerprint": "x",
        "lora": {"rank": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj"]},
        "base_weights": base_weights,
    }
    if drop:
        side.pop(drop)
    (ld / "sharpscope_lora.json").write_text(json.dumps(side))
    return str(ld), "sharpscope_lora.json"


CKPT_DEFECTS["ckpt_lora_without_arch"] = lambda d, b: _lora(d, b, "arch", None)
CKPT_DEFECTS["ckpt_lora_base_escapes"] = lambda d, b: _lora(d, b, None, "../../etc/passwd")
CKPT_DEFECTS["ckpt_lora_base_absolute"] = lambda d, b: _lora(d, b, None, "/etc/passwd")
CKPT_DEFECTS["ckpt_lora_without_lora"] = lambda d, b: _lora(d, b, "lora", None)


@ckpt_defect
def ckpt_dir_without_weights(d: Path, b: Path) -> tuple[str, str]:
    (d / "cd").mkdir()
    (d / "cd" / "notes.txt").write_text("x")
    return str(d / "cd"), "cd"


# ---- the case runner ---------------------------------------------------------------------------------------


@dataclass
class Case:
    verb: str
    args: Callable[[Path, Path], tuple[list[str], str]]  # (case dir, base) -> (argv, expected text)
    check_verb: bool = False  # manifest check: exit 1 with problem lines


def _snapshot(root: Path, skip: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_relative_to(skip)}


def run_case(case: Case, tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv, expect = case.args(tmp_path, base)
    out = tmp_path / "out"
    before, base_before = _snapshot(tmp_path, out), _snapshot(base, base / "nothing")
    res = runner.invoke(app, argv)
    TALLY[case.verb, "cases"] += 1
    text = res.output
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if case.check_verb:
        assert res.exit_code == 1, text
        assert any(expect in ln for ln in lines), text
    else:
        assert res.exit_code not in (0, None), text
        assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
        assert len(lines) == 1 and lines[0].startswith("error: "), text
        assert expect in lines[0], (expect, text)
    assert _snapshot(tmp_path, out) == before, "a file appeared outside --out"
    assert _snapshot(base, base / "nothing") == base_before
    if out.exists():
        left = [p for p in out.rglob("*") if p.is_file() or p.name.startswith(".staging-")]
        # a sweep's bookkeeping (the plan, the study it belongs to, its lock) is written before the cells;
        # no cell or result file may appear
        bookkeeping = {".sweep.lock", "plan.json", "study.json"} if case.verb == "sweep" else set()
        left = [p for p in left if p.name not in bookkeeping and not p.name.startswith(".sweep.lock")]
        assert not left, f"partial output: {left}"
    TALLY[case.verb, "clear"] += 1


CASES: dict[str, Case] = {}


def _add(name: str, case: Case) -> None:
    assert name not in CASES
    CASES[name] = case


def _ck(b: Path) -> str:
    return str(b / "m.safetensors")


def _man(b: Path) -> str:
    return str(b / "c.csv")


# -- manifests x verbs
for mname, mfn in {**MANIFEST_DEFECTS}.items():

    def score_args(d, b, mfn=mfn):
        m, exp = mfn(d, b)
        return ["score", _ck(b), m, "--arch", "aasist", "--out", str(d / "out"), "--n-boot", "0"], exp

    def sharp_args(d, b, mfn=mfn):
        m, exp = mfn(d, b)
        return ["sharpness", _ck(b), m, "--measure", "m-sharpness", "--out", str(d / "out")], exp

    def metrics_args(d, b, mfn=mfn):
        m, exp = mfn(d, b)
        return ["metrics", str(b / "scores.csv"), m, "--out", str(d / "out"), "--n-boot", "0"], exp

    def train_args(d, b, mfn=mfn):
        m, exp = mfn(d, b)
        cfg = {
            "arch": "aasist",
            "model": dict(TINY_AASIST),
            "epochs": 1,
            "data": {"train": m, "nb_samp": 4000},
        }
        _write(d / "t.yaml", yaml.safe_dump(cfg))
        return ["train", str(d / "t.yaml"), "--out", str(d / "out"), "--no-progress"], exp

    def sweep_args(d, b, mfn=mfn):
        m, exp = mfn(d, b)
        spec = {
            "scoring": {"batch_size": 4, "nb_samp": 4000},
            "checkpoints": [{"path": _ck(b), "arch": "aasist"}],
            "testsets": [{"name": "t", "manifest": m}],
        }
        _write(d / "s.yaml", yaml.safe_dump(spec))
        return ["sweep", str(d / "s.yaml"), "--out", str(d / "out")], exp

    _add(f"score-{mname}", Case("score", score_args))
    _add(f"sharpness-{mname}", Case("sharpness", sharp_args))
    _add(f"metrics-{mname}", Case("metrics", metrics_args))
    _add(f"train-{mname}", Case("train", train_args))
    _add(f"sweep-{mname}", Case("sweep", sweep_args))

    def check_args(d, b, mfn=mfn):
        m, exp = mfn(d, b)
        return ["manifest", "check", m], exp

    _add(f"check-{mname}", Case("manifest check", check_args, check_verb=mname not in ("missing_file",
         "unknown_suffix", "garbage_parquet", "empty_file", "not_utf8", "duplicate_header_column",
         "extra_field")))  # fmt: skip

# -- audio x verbs
for aname, afn in AUDIO_DEFECTS.items():

    def a_score(d, b, afn=afn):
        m, exp = afn(d, b)
        return ["score", _ck(b), m, "--arch", "aasist", "--out", str(d / "out"), "--n-boot", "0"], exp

    def a_sharp(d, b, afn=afn):
        m, exp = afn(d, b)
        return ["sharpness", _ck(b), m, "--measure", "m-sharpness", "--out", str(d / "out")], exp

    def a_check(d, b, afn=afn):
        m, exp = afn(d, b)
        return ["manifest", "check", m, "--audio", "--workers", "1"], "row 1"

    _add(f"score-{aname}", Case("score", a_score))
    _add(f"sharpness-{aname}", Case("sharpness", a_sharp))
    _add(f"check-{aname}", Case("manifest check", a_check, check_verb=True))

# -- checkpoints x verbs
for cname, cfn in CKPT_DEFECTS.items():

    def c_score(d, b, cfn=cfn):
        ck, exp = cfn(d, b)
        return ["score", ck, _man(b), "--arch", "aasist", "--out", str(d / "out"), "--n-boot", "0"], exp

    def c_sharp(d, b, cfn=cfn):
        ck, exp = cfn(d, b)
        return ["sharpness", ck, _man(b), "--measure", "m-sharpness", "--out", str(d / "out")], exp

    def c_sweep(d, b, cfn=cfn):
        ck, exp = cfn(d, b)
        spec = {
            "scoring": {"batch_size": 4, "nb_samp": 4000},
            "checkpoints": [{"path": ck, "arch": "aasist"}],
            "testsets": [{"name": "t", "manifest": _man(b)}],
        }
        _write(d / "s.yaml", yaml.safe_dump(spec))
        return ["sweep", str(d / "s.yaml"), "--out", str(d / "out")], exp

    _add(f"score-{cname}", Case("score", c_score))
    _add(f"sharpness-{cname}", Case("sharpness", c_sharp))
    if cname not in ("ckpt_lora_without_arch",):  # a LoRA directory with arch aasist: refused either way
        _add(f"sweep-{cname}", Case("sweep", c_sweep))


# -- study specs
def _study(d: Path, b: Path) -> dict:
    return {
        "name": "fz",
        "scoring": {"batch_size": 4, "nb_samp": 4000},
        "checkpoints": [{"path": _ck(b), "arch": "aasist"}],
        "testsets": [{"name": "t", "manifest": _man(b)}],
        "measures": [{"name": "m-sharpness", "rho": 0.05}],
    }


STUDY_DEFECTS: dict[str, tuple[Callable[[dict], object], str]] = {
    "trust_checkpoint": (lambda s: s.update(trust_checkpoint=True), "trust_checkpoint"),
    "in_domain_quoted": (lambda s: s["testsets"][0].update(in_domain="false"), "testsets[0].in_domain"),
    "rho_word": (lambda s: s["measures"][0].update(rho="abc"), "measures[0].rho"),
    "rho_empty": (lambda s: s["measures"][0].update(rho=[]), "measures[0].rho"),
    "rho_nan": (lambda s: s["measures"][0].update(rho=float("nan")), "measures[0].rho"),
    "adaptive_quoted": (lambda s: s["measures"][0].update(adaptive="false"), "measures[0].adaptive"),
    "loss_unknown": (lambda s: s["measures"][0].update(loss="mse"), "measures[0].loss"),
    "loss_empty": (lambda s: s["measures"][0].update(loss=[]), "measures[0].loss"),
    "measure_unknown": (lambda s: s["measures"][0].update(name="flatness"), "measures[0].name"),
    "measure_name_list": (lambda s: s["measures"][0].update(name=[1]), "measures[0].name"),
    "scope_bad_regex": (lambda s: s["measures"][0].update(scope="regex:("), "measures[0].scope"),
    "testset_name_list": (lambda s: s["testsets"][0].update(name=[1, 2]), "testsets[0].name"),
    "testset_name_path": (lambda s: s["testsets"][0].update(name="../t"), "testsets[0].name"),
    "testset_manifest_number": (lambda s: s["testsets"][0].update(manifest=5), "testsets[0].manifest"),
    "checkpoint_meta_list": (lambda s: s["checkpoints"][0].update(meta=[1, 2]), "checkpoints[0].meta"),
    "checkpoint_cfg_list": (lambda s: s["checkpoints"][0].update(model_config=[1]), "model_config"),
    "checkpoint_cfg_huge": (
        lambda s: s["checkpoints"][0].update(model_config={"first_conv": 1e12}),
        "model_config.first_conv",
    ),
    "checkpoint_arch_unknown": (lambda s: s["checkpoints"][0].update(arch="resnet"), "checkpoints[0].arch"),
    "checkpoint_name_abs": (lambda s: s["checkpoints"][0].update(name="/abs"), "checkpoints[0].name"),
    "nb_samp_negative": (lambda s: s["scoring"].update(nb_samp=-1), "scoring.nb_samp"),
    "batch_size_word": (lambda s: s["scoring"].update(batch_size="big"), "scoring.batch_size"),
    "crop_unknown": (lambda s: s["scoring"].update(crop="middle"), "scoring.crop"),
    "order_unknown": (lambda s: s["scoring"].update(order="random"), "scoring.order"),
    "class_mix_bad": (lambda s: s["scoring"].update(class_mix=1.5), "scoring.class_mix"),
    "nonfinite_bad": (lambda s: s["scoring"].update(nonfinite="ignore"), "scoring.nonfinite"),
    "pool_arch_quoted": (lambda s: s["scoring"].update(pool_arch="yes"), "scoring.pool_arch"),
    "scoring_unknown_key": (lambda s: s["scoring"].update(speed=2), "scoring.speed"),
    "seeds_words": (lambda s: s.update(seeds=["a"]), "seeds"),
    "seeds_empty": (lambda s: s.update(seeds=[]), "seeds"),
    "device_bogus": (lambda s: s.update(device="bogus"), "device"),
    "name_path": (lambda s: s.update(name="a/b"), "name"),
    "top_unknown_key": (lambda s: s.update(colour="red"), "colour"),
    "subset_n_word": (
        lambda s: s.update(subsets=[{"name": "a", "testset": "t", "by": "attack", "n_bonafide": "abc"}]),
        "subsets[0].n_bonafide",
    ),
    "subset_name_path": (
        lambda s: s.update(subsets=[{"name": "../../x", "testset": "t", "by": "attack"}]),
        "subsets[0].name",
    ),
    "subset_unknown_testset": (
        lambda s: s.update(subsets=[{"name": "a", "testset": "zz", "by": "attack"}]),
        "subsets[0].testset",
    ),
    "no_checkpoints": (lambda s: s.update(checkpoints=[]), "checkpoints"),
    "no_testsets": (lambda s: s.pop("testsets"), "testsets"),
}

for sname, (edit, exp) in STUDY_DEFECTS.items():

    def s_args(d, b, edit=edit, exp=exp):
        spec = _study(d, b)
        edit(spec)
        _write(d / "s.yaml", yaml.safe_dump(spec))
        return ["sweep", str(d / "s.yaml"), "--out", str(d / "out")], exp

    _add(f"sweep-spec-{sname}", Case("sweep", s_args))

RAW_YAML_DEFECTS = {
    "yaml_syntax": ("name: [1, 2\n", "line"),
    "yaml_duplicate_key": ("name: a\nname: b\n", "duplicate key 'name'"),
    "yaml_python_tag": ("name: !!python/object/apply:os.system ['touch PWNED']\n", "not valid YAML"),
    "yaml_alias_bomb": (
        'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
        + "".join(
            f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]\n"
            for i in range(1, 9)
        ),
        "alias bomb",
    ),
    "yaml_recursive_alias": ("a: &a [*a]\n", "recursive alias"),
    "yaml_not_utf8": (b"name: \xff\xfe\n", "not UTF-8"),
    "yaml_top_list": ("- 1\n- 2\n", "x.yaml"),
}

# -- raw YAML defects against every spec-reading verb
for yname, (text, exp) in RAW_YAML_DEFECTS.items():
    for verb, argv in (
        ("sweep", lambda d: ["sweep", str(d / "x.yaml"), "--out", str(d / "out")]),
        ("zoo", lambda d: ["zoo", str(d / "x.yaml"), "--out", str(d / "out")]),
        ("train", lambda d: ["train", str(d / "x.yaml"), "--out", str(d / "out"), "--no-progress"]),
        ("figures", lambda d: ["figures", str(d / "x.yaml"), "--out", str(d / "out")]),
    ):

        def y_args(d, b, text=text, exp=exp, argv=argv):
            _write(d / "x.yaml", text)
            return argv(d), exp

        _add(f"{verb}-{yname}", Case(verb, y_args))


# -- zoo and training specs
def _train_cfg(b: Path) -> dict:
    model = dict(TINY_AASIST)  # a copy: cases edit it
    return {"arch": "aasist", "model": model, "epochs": 1, "data": {"train": _man(b), "nb_samp": 4000}}


TRAIN_DEFECTS: dict[str, tuple[Callable[[dict], object], str]] = {
    "arch_unknown": (lambda c: c.update(arch="cnn"), "arch"),
    "epochs_word": (lambda c: c.update(epochs="many"), "epochs"),
    "epochs_zero": (lambda c: c.update(epochs=0), "epochs"),
    "lr_negative": (lambda c: c.update(optimizer={"lr": -1.0}), "optimizer.lr"),
    "model_cfg_list": (lambda c: c.update(model=[1, 2]), "model"),
    "model_cfg_types": (lambda c: c["model"].update(gat_dims="wide"), "model"),
    "model_cfg_huge": (lambda c: c["model"].update(first_conv=1e12), "model.first_conv"),
    "nb_samp_negative": (lambda c: c["data"].update(nb_samp=-1), "data.nb_samp"),
    "batch_quoted_bool": (lambda c: c["data"].update(cache_audio="false"), "data.cache_audio"),
    "unknown_key": (lambda c: c.update(colour="red"), "colour"),
    "device_bogus": (lambda c: c.update(device="tpu"), "device"),
    "sam_and_mldg": (lambda c: c.update(sam={"rho": 0.05}, mldg={}), "sam and mldg"),
}


def _one_class(d: Path, b: Path) -> str:
    lines = _manifest_text(b).splitlines()
    return str(
        _write(d / "one.csv", "\n".join([lines[0]] + [ln for ln in lines[1:] if ",spoof," in ln]) + "\n")
    )


for tname, (edit, exp) in TRAIN_DEFECTS.items():

    def t_args(d, b, edit=edit, exp=exp):
        cfg = _train_cfg(b)
        edit(cfg)
        _write(d / "t.yaml", yaml.safe_dump(cfg))
        return ["train", str(d / "t.yaml"), "--out", str(d / "out"), "--no-progress"], exp

    def z_args(d, b, edit=edit, exp=exp):
        cfg = _train_cfg(b)
        edit(cfg)
        _write(d / "z.yaml", yaml.safe_dump({"base": cfg, "runs": [{"name": "r"}]}))
        return ["zoo", str(d / "z.yaml"), "--out", str(d / "out")], exp

    _add(f"train-cfg-{tname}", Case("train", t_args))
    _add(f"zoo-cfg-{tname}", Case("zoo", z_args))


def _train_one_class(d, b):
    cfg = _train_cfg(b)
    cfg["data"]["train"] = _one_class(d, b)
    _write(d / "t.yaml", yaml.safe_dump(cfg))
    return ["train", str(d / "t.yaml"), "--out", str(d / "out"), "--no-progress"], "only spoof"


_add("train-one-class", Case("train", _train_one_class))

ZOO_DEFECTS = {
    "name_dotdot": ({"name": "../escaped_run"}, "runs[0].name"),
    "name_absolute": ({"name": "/tmp/sharpscope_fuzz_abs"}, "runs[0].name"),
    "name_slash": ({"name": "a/b"}, "runs[0].name"),
    "name_hidden": ({"name": ".h"}, "runs[0].name"),
    "name_list": ({"name": [1, 2]}, "runs[0].name"),
    "grid_not_list": ({"name": "r", "grid": {"seed": 1}}, "grid.seed"),
    "grid_not_mapping": ({"name": "r", "grid": [1]}, "runs[0].grid"),
    "set_not_mapping": ({"name": "r", "set": [1]}, "runs[0].set"),
    "grid_into_scalar": ({"name": "r", "grid": {"epochs.x": [1]}}, "epochs.x"),
    "unknown_key": ({"name": "r", "colour": 1}, "colour"),
}
for zname, (run, exp) in ZOO_DEFECTS.items():

    def zz_args(d, b, run=run, exp=exp):
        _write(d / "z.yaml", yaml.safe_dump({"base": _train_cfg(b), "runs": [run]}))
        return ["zoo", str(d / "z.yaml"), "--out", str(d / "out")], exp

    _add(f"zoo-{zname}", Case("zoo", zz_args))

# -- figure specs
FIG_DEFECTS = {
    "size_unbounded": ({"size": [1e6, 1e6]}, "size"),
    "size_pixels": ({"size": [30, 30], "dpi": 1200}, "size"),
    "size_word": ({"size": "huge"}, "size"),
    "dpi_word": ({"dpi": "high"}, "dpi"),
    "kind_unknown": ({"kind": "pie"}, "kind"),
    "name_path": ({"name": "../x"}, "name must use"),
    "source_missing": ({"source": "nowhere.parquet"}, "source"),
    "format_unknown": ({"formats": ["gif"]}, "formats"),
    "options_unknown": ({"options": {"colour": 1}}, "options"),
}
for fname, (over, exp) in FIG_DEFECTS.items():

    def f_args(d, b, over=over, exp=exp):
        fig = {"name": "f", "source": str(b / "run"), "kind": "eer-by-method", "formats": "png", **over}
        _write(d / "f.yaml", yaml.safe_dump({"figures": [fig]}))
        return ["figures", str(d / "f.yaml"), "--out", str(d / "out")], exp

    _add(f"figures-{fname}", Case("figures", f_args))


# -- output locations for every verb
def _verb_argv(verb: str, d: Path, b: Path, out: str) -> list[str]:
    if verb == "score":
        return ["score", _ck(b), _man(b), "--arch", "aasist", "--out", out, "--n-boot", "0"]
    if verb == "sharpness":
        return ["sharpness", _ck(b), _man(b), "--measure", "m-sharpness", "--out", out]
    if verb == "metrics":
        return ["metrics", str(b / "scores.csv"), _man(b), "--out", out, "--n-boot", "0"]
    if verb == "sweep":
        _write(d / "s.yaml", yaml.safe_dump(_study(d, b)))
        return ["sweep", str(d / "s.yaml"), "--out", out]
    if verb == "report":
        return ["report", str(b / "run"), "--out", out, "--n-boot", "0"]
    if verb == "figures":
        fig = {"name": "f", "source": str(b / "run"), "kind": "eer-by-method", "formats": "png"}
        _write(d / "f.yaml", yaml.safe_dump({"figures": [fig]}))
        return ["figures", str(d / "f.yaml"), "--out", out]
    if verb == "train":
        _write(d / "t.yaml", yaml.safe_dump(_train_cfg(b)))
        return ["train", str(d / "t.yaml"), "--out", out, "--no-progress"]
    if verb == "zoo":
        _write(d / "z.yaml", yaml.safe_dump({"base": _train_cfg(b), "runs": [{"name": "r"}]}))
        return ["zoo", str(d / "z.yaml"), "--out", out]
    if verb == "correlate":
        return [
            "correlate",
            str(b / "run"),
            "--x",
            "m-sharpness",
            "--rho",
            "0.05",
            "--n-boot",
            "0",
            "--out",
            out,
        ]
    raise AssertionError(verb)


OUT_DEFECTS = {
    "out_is_file": lambda d: (str(_write(d / "out", "x")), "is a file"),
    "out_under_file": lambda d: (str(_write(d / "out", "x")) + "/sub", "is a file"),
    "out_read_only": lambda d: ("/sys/sharpscope-fuzz-out", "not writable"),
}
for verb in ("score", "sharpness", "metrics", "sweep", "report", "figures", "train", "zoo", "correlate"):
    for oname, ofn in OUT_DEFECTS.items():
        if verb == "correlate" and oname == "out_is_file":
            continue  # correlate's --out *is* a file name

        def o_args(d, b, verb=verb, ofn=ofn):
            out, exp = ofn(d)
            return _verb_argv(verb, d, b, out), exp

        _add(f"{verb}-{oname}", Case(verb, o_args))


# -- option values
OPTION_DEFECTS = {
    "score-device-bogus": ("score", ["--device", "bogus"], "--device"),
    "score-device-index": ("score", ["--device", "cuda:99"], "--device"),
    "sharpness-device-bogus": ("sharpness", ["--device", "bogus"], "--device"),
    "sharpness-scope-regex": ("sharpness", ["--scope", "regex:("], "--scope"),
    "sharpness-scope-word": ("sharpness", ["--scope", "some"], "some"),
    "sharpness-measure-unknown": ("sharpness", ["--measure", "flatness"], "flatness"),
    "sharpness-rho-negative": ("sharpness", ["--rho", "-1"], "rho"),
    "score-format-unknown": ("score", ["--format", "xml"], "xml"),
    "score-crop-unknown": ("score", ["--crop", "middle"], "middle"),
    "score-batch-zero": ("score", ["--batch-size", "0"], "batch size"),
    "score-type-unknown": ("score", ["--score", "prob"], "prob"),
    "metrics-format-unknown": ("metrics", ["--format", "xml"], "xml"),
    "sweep-executor-unknown": ("sweep", ["--executor", "mpi"], "mpi"),
    "zoo-executor-unknown": ("zoo", ["--executor", "mpi"], "mpi"),
}
for oname, (verb, extra, exp) in OPTION_DEFECTS.items():

    def op_args(d, b, verb=verb, extra=extra, exp=exp):
        argv = _verb_argv(verb, d, b, str(d / "out"))
        if "--measure" in extra:
            i = argv.index("--measure")
            argv = argv[:i] + argv[i + 2 :]
        return argv + extra, exp

    _add(oname, Case(verb, op_args))


REPORT_DEFECTS = {
    "report-results-missing": (["report", "nowhere", "--out", "OUT"], "nowhere"),
    "report-not-a-results-table": (["report", "CSV", "--out", "OUT"], "t.csv"),
    "report-spec-bad-yaml": (["report", "RUN", "--out", "OUT", "--spec", "BADYAML"], "bad.yaml"),
    "report-spec-missing": (["report", "RUN", "--out", "OUT", "--spec", "nospec.yaml"], "nospec.yaml"),
    "correlate-results-missing": (["correlate", "nowhere", "--x", "m-sharpness"], "nowhere"),
    "correlate-x-unknown": (["correlate", "RUN", "--x", "flatness", "--out", "OUT/c.csv"], "flatness"),
    "correlate-method-unknown": (["correlate", "RUN", "--x", "m-sharpness", "--method", "magic"], "magic"),
    "correlate-not-a-results-table": (["correlate", "CSV", "--x", "m-sharpness"], "checkpoint"),
}
for rname, (argv0, exp) in REPORT_DEFECTS.items():

    def r_args(d, b, argv0=argv0, exp=exp):
        _write(d / "t.csv", "a,b\n1,2\n")
        _write(d / "bad.yaml", "a: [1\n")
        subst = {"OUT": str(d / "out"), "RUN": str(b / "run"), "CSV": str(d / "t.csv"),
                 "BADYAML": str(d / "bad.yaml"), "OUT/c.csv": str(d / "out" / "c.csv")}  # fmt: skip
        return [subst.get(a, a) for a in argv0], exp

    _add(rname, Case(rname.split("-")[0], r_args))


def _non_utf8_scores(d, b):
    _write(d / "s.txt", b"c_b0 \xff 1.0\n")
    return ["metrics", str(d / "s.txt"), _man(b), "--out", str(d / "out")], "not UTF-8"


_add("metrics-scores-not-utf8", Case("metrics", _non_utf8_scores))


@pytest.mark.parametrize("name", sorted(CASES))
def test_fuzz_case(name: str, tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_case(CASES[name], tmp_path, base, monkeypatch)


def test_enough_cases_across_every_verb() -> None:
    verbs = Counter(c.verb for c in CASES.values())
    assert sum(verbs.values()) >= 200
    for verb in ("score", "sharpness", "metrics", "sweep", "train", "zoo", "figures", "report", "correlate"):
        assert verbs[verb] >= 3, verbs
