"""Held-out text kinds (softhard.inspect.zoo.texts): stable, long enough, of the kind they claim, never the
training text, and readable as ``--text softhard:KIND``."""

import io
import re
import tokenize

import pytest

from softhard.inspect.zoo import corpus, texts


@pytest.mark.parametrize("kind", texts.TEXT_KINDS)
def test_each_kind_is_long_stable_and_fingerprinted(kind):
    text = texts.heldout_text(kind)
    assert len(text.encode()) == texts.TEXT_BYTES >= 65536
    assert texts.heldout_text("softhard:" + kind) == text
    assert texts.heldout_text(kind, 1000) == text.encode()[:1000].decode("utf-8", "ignore")  # a prefix of it
    info = texts.text_info(kind)
    import hashlib

    assert info["fingerprint"] == hashlib.sha256(text.encode()).hexdigest()[:16] and info["bytes"] == len(
        text.encode()) and info["parts"] >= 2


def test_no_kind_is_training_text():
    train, held = corpus.stdlib_corpus()
    for kind in texts.TEXT_KINDS:
        text = texts.heldout_text(kind)
        # 80-byte windows spread over the text: none of them occurs in the docstrings trained on
        windows = [text[i:i + 80] for i in range(0, len(text) - 80, len(text) // 40)]
        hits = [w for w in windows if w in train]
        assert len(hits) == 0, (kind, hits[:2])


def test_the_kinds_are_what_they_say():
    prose, code, legal = (texts.heldout_text(k) for k in texts.TEXT_KINDS)
    # code: no comment, and no string that stands alone as a statement (a docstring), in the tokens of the text
    toks = []
    try:
        for t in tokenize.generate_tokens(io.StringIO(code).readline):
            toks.append(t)
    except tokenize.TokenError:  # the cut at 256 KiB may fall inside a statement
        pass
    assert len(toks) > 20000 and not [t for t in toks if t.type == tokenize.COMMENT]
    starts = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.NL)
    alone = [t for i, t in enumerate(toks[1:-1], 1) if t.type == tokenize.STRING and toks[i - 1].type in starts
             and toks[i + 1].type == tokenize.NEWLINE]
    assert not alone, alone[:2]
    assert code.count("def ") > 200 and code.count("return") > 200
    # legal: licence words; prose: the reference manual, mostly letters and spaces
    assert legal.lower().count("licen") > 100 and legal.count("warrant") + legal.count("WARRANT") > 20
    assert prose.startswith('The "assert" statement')
    letters = sum(c.isalpha() or c == " " for c in prose) / len(prose)
    assert letters > 0.8 and len(re.findall(r"[a-z]\.\s", prose)) > 1000


def test_bad_kinds_raise_naming_the_parameter():
    with pytest.raises(ValueError, match=r"'kind' parameter of heldout_text must be one of prose, code, legal"):
        texts.heldout_text("poetry")
    with pytest.raises(ValueError, match=r"'text' parameter of heldout_text must be one of softhard:prose"):
        texts.heldout_text("softhard:poetry")
    with pytest.raises(ValueError, match=r"'max_bytes' parameter of heldout_text"):
        texts.heldout_text("code", 0)


def test_text_names_read_through_a_tokenizer():
    pytest.importorskip("transformers")
    from softhard.inspect.loading import encode_text
    from softhard.inspect.tinylm import byte_tokenizer

    ids = encode_text("softhard:legal", byte_tokenizer(), 256, max_tokens=3000)
    assert ids.tolist() == list(texts.heldout_text("legal").encode()[:3000])
    with pytest.raises(ValueError, match=r"'text' parameter of inspect must be one of softhard:prose"):
        encode_text("softhard:poems", byte_tokenizer(), 256, max_tokens=10)


def test_cli_refuses_an_unknown_text_name(tiny_lm_small, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from typer.testing import CliRunner

    from softhard.cli import app
    from softhard.inspect import tinylm

    monkeypatch.setattr(tinylm, "DEFAULT", tinylm.SMALL)
    monkeypatch.setenv("SOFTHARD_CACHE", str(tiny_lm_small.path.parent))
    r = CliRunner().invoke(app, ["inspect", "softhard:tiny-lm", "--out", str(tmp_path / "o2"), "--tokens", "64",
                                 "--text", "softhard:poetry", "--no-progress"])
    assert r.exit_code == 2 and "must be one of softhard:prose, softhard:code, softhard:legal" in r.output
    assert "Traceback" not in r.output
