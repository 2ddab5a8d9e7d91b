"""``--model-config`` files are read as strictly as study specs (issue 12): one line naming the file."""

from __future__ import annotations

import pytest

from sharpscope.errors import CheckpointError
from sharpscope.scoring import read_model_config


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("dup.yaml", "nb_samp: 100\nnb_samp: 200\n", "duplicate key 'nb_samp'"),
        ("tag.yaml", "x: !!python/object/apply:os.system ['true']\n", "dup"),
        ("bomb.yaml", "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
         + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                   for p, c in zip("abcdef", "bcdefg", strict=True)), "dup"),
        ("bad.json", "{\"nb_samp\": 1,", "bad.json"),
        ("list.yaml", "- 1\n- 2\n", "mapping"),
    ],
)
def test_bad_model_config_is_one_line_naming_the_file(tmp_path, name, text, needle):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(CheckpointError) as e:
        read_model_config(p)
    msg = str(e.value)
    assert "\n" not in msg and name in msg
    if needle != "dup":
        assert needle in msg


def test_good_model_config_reads_as_written(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("nb_samp: 16000\nfilts: [8, [1, 4], [4, 8]]\n")
    assert read_model_config(p) == {"nb_samp": 16000, "filts": [8, [1, 4], [4, 8]]}
