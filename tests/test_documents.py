"""read_corpus: every supported file type, ids and provenance, and each kind of bad file as a
one-line error (on_bad_file: error) or a count (skip)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from specialize.data.documents import Document, read_corpus
from specialize.errors import SpecializeError


def pdf_bytes(content: bytes | None) -> bytes:
    """A minimal valid one-page PDF (correct xref). ``content`` is the page's content stream
    (``BT /F1 12 Tf (Hello) Tj ET`` draws text); None gives a page with no content at all."""
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
    page += b" /Resources << /Font << /F1 5 0 R >> >>"
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        page + (b" /Contents 4 0 R >>" if content is not None else b" >>"),
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content or b""), content or b""),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, obj)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


TEXT_PDF = pdf_bytes(b"BT /F1 12 Tf 72 720 Td (Hello PDF world.) Tj ET")


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def one_line(e: pytest.ExceptionInfo[SpecializeError]) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------- file types


def test_txt_and_md_files_keep_their_text_with_bom_and_crlf_normalised(tmp_path):
    txt = write(tmp_path / "notes.txt", "\ufeffLine one.\r\nLine two.\r\n\r\n  Indented.\n")
    docs, stats = read_corpus(txt)
    assert docs == [
        Document(id="notes", text="Line one.\nLine two.\n\n  Indented.\n", source=str(txt), meta={})
    ]
    assert stats.files == {"notes.txt": 1} and stats.skipped == {}
    md = write(tmp_path / "Guide.MD", "# Title\n\nBody text.")
    (doc,) = read_corpus(md)[0]
    assert (doc.id, doc.text) == ("Guide", "# Title\n\nBody text.")


def test_pdf_with_a_text_layer_is_read(tmp_path):
    pdf = write(tmp_path / "paper.pdf", TEXT_PDF)
    docs, stats = read_corpus(pdf)
    assert [d.id for d in docs] == ["paper"]
    assert docs[0].text.strip() == "Hello PDF world."
    assert docs[0].source == str(pdf) and docs[0].meta == {}
    assert stats.files == {"paper.pdf": 1}


def test_jsonl_rows_join_text_fields_take_ids_and_keep_other_columns_as_meta(tmp_path):
    rows = [
        {"doc": "a1", "title": "Orbits", "body": "LEO is low.", "year": 2020},
        {"doc": "a2", "title": "", "body": "Only a body.", "year": None},
        {"doc": "a3", "title": "  ", "body": None, "year": 2021},  # empty: counted, skipped
        {"doc": "", "title": "No id", "body": "Falls back.", "year": 2022},
    ]
    f = write(tmp_path / "corpus.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs, stats = read_corpus(f, text_fields=["title", "body"], id_field="doc")
    assert [(d.id, d.text, d.source, d.meta) for d in docs] == [
        ("a1", "Orbits\n\nLEO is low.", f"{f}:1", {"year": 2020}),
        ("a2", "Only a body.", f"{f}:2", {"year": None}),
        ("corpus-4", "No id\n\nFalls back.", f"{f}:4", {"year": 2022}),
    ]
    assert stats.files == {"corpus.jsonl": 3}
    assert stats.skipped == {"empty row": [f"{f}:3"]}
    # Without id_field, ids are "<stem>-<line>" and an "id"-like column stays in meta.
    docs, _ = read_corpus(f, text_fields=["body"])
    assert [d.id for d in docs] == ["corpus-1", "corpus-2", "corpus-4"]
    assert docs[0].meta == {"doc": "a1", "title": "Orbits", "year": 2020}


def test_csv_and_parquet_rows(tmp_path):
    csv = write(tmp_path / "t.csv", 'id,text,topic\r\n7,"Multi\r\nline",space\r\n8,,x\r\n')
    docs, stats = read_corpus(csv, id_field="id")
    assert [(d.id, d.text, d.source, d.meta) for d in docs] == [
        ("7", "Multi\nline", f"{csv}:2", {"topic": "space"})
    ]
    assert stats.skipped == {"empty row": [f"{csv}:4"]}
    pq_file = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["One.", "Two."], "n": [1, 2]}), pq_file)
    docs, stats = read_corpus(pq_file)
    assert [(d.id, d.text, d.source, d.meta) for d in docs] == [
        ("t-1", "One.", f"{pq_file}:1", {"n": 1}),
        ("t-2", "Two.", f"{pq_file}:2", {"n": 2}),
    ]


def test_a_missing_text_or_id_column_is_an_error_naming_the_setting(tmp_path):
    f = write(tmp_path / "c.jsonl", '{"body": "x"}\n')
    with pytest.raises(SpecializeError) as e:
        read_corpus(f)
    msg = one_line(e)
    assert f"{f}:1" in msg and "no column 'text'" in msg and "synth.text_fields" in msg
    with pytest.raises(SpecializeError, match="synth.id_field"):
        read_corpus(f, text_fields=["body"], id_field="key")


def test_folder_is_read_recursively_in_a_fixed_order_and_counts_what_it_skips(tmp_path):
    root = tmp_path / "corpus"
    write(root / "b.txt", "B.")
    write(root / "a" / "z.txt", "Z.")
    write(root / "a" / "x.md", "X.")
    write(root / "c" / "d" / "e.pdf", TEXT_PDF)
    write(root / "c" / "rows.jsonl", '{"text": "R1"}\n{"text": "R2"}\n')
    write(root / "slides.pptx", b"PK\x03\x04")
    write(root / ".DS_Store", b"\x00")
    write(root / ".git" / "HEAD", "ref")
    docs, stats = read_corpus(root)
    assert [d.id for d in docs] == ["a/x", "a/z", "b", "c/d/e", "c/rows-1", "c/rows-2"]
    assert docs[0].source == str(root / "a" / "x.md")
    assert stats.files == {"a/x.md": 1, "a/z.txt": 1, "b.txt": 1, "c/d/e.pdf": 1, "c/rows.jsonl": 2}
    assert stats.skipped == {
        "hidden": [str(root / ".DS_Store"), str(root / ".git")],
        "unsupported type": [str(root / "slides.pptx")],
    }
    summary = stats.as_dict()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["documents"] == 6
    assert summary["skipped"] == {"hidden": 2, "unsupported type": 1}
    assert read_corpus(root) == (docs, stats)  # deterministic


def test_max_documents_stops_in_reading_order(tmp_path):
    write(tmp_path / "a.txt", "A.")
    write(tmp_path / "b.jsonl", "".join(json.dumps({"text": f"r{i}"}) + "\n" for i in range(5)))
    write(tmp_path / "c.txt", "C.")
    docs, stats = read_corpus(tmp_path, max_documents=3)
    assert [d.id for d in docs] == ["a", "b-1", "b-2"]
    assert stats.files == {"a.txt": 1, "b.jsonl": 2}
    with pytest.raises(SpecializeError, match="synth.max_documents"):
        read_corpus(tmp_path, max_documents=0)


# ---------------------------------------------------------------------------- bad files

BAD_FILES = [
    ("empty.txt", b"", "empty"),
    ("blank.md", b"  \n\t\r\n", "empty"),
    ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    ("utf16.txt", "text".encode("utf-16"), "binary"),
    ("latin1.txt", "caf\xe9 au lait".encode("latin-1"), "not UTF-8"),
    ("scan.pdf", pdf_bytes(None), "no text layer"),
    ("shapes.pdf", pdf_bytes(b"0 0 1 rg 10 10 100 100 re f"), "no text layer"),
    ("corrupt.pdf", b"%PDF-1.4\nthis is not a pdf at all", "unreadable PDF"),
    ("truncated.pdf", TEXT_PDF[: len(TEXT_PDF) // 3], "unreadable PDF"),
    ("notpdf.pdf", b"plain text with a pdf suffix", "unreadable PDF"),
    ("empty.pdf", b"", "empty"),
    ("empty.jsonl", b"\n\n", "empty"),
    ("binary.csv", b"text\n\x00\x01\x02", "binary"),
    ("latin1.csv", "text\ncaf\xe9\n".encode("latin-1"), "not UTF-8"),
    ("broken.parquet", b"PAR1 not really parquet", "unreadable Parquet"),
]


@pytest.mark.parametrize("name,data,reason", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_one_line_error_or_a_count(tmp_path, caplog, capfd, name, data, reason):
    bad = write(tmp_path / "in" / name, data)
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings():
        warnings.simplefilter("error")  # pypdf's warnings must not escape either
        with pytest.raises(SpecializeError) as e:
            read_corpus(bad)
        msg = one_line(e)
        assert msg.startswith(f"{bad} field 'synth.documents': ")
        assert "set synth.on_bad_file: skip to count and skip such files" in msg
        assert e.value.__cause__ is None and e.value.__suppress_context__

        good = write(tmp_path / "in" / "good.txt", "Good text.")
        docs, stats = read_corpus(tmp_path / "in", on_bad_file="skip")
    assert [d.id for d in docs] == ["good"]
    assert stats.skipped == {reason: [str(bad)]}
    assert stats.files == {"good.txt": 1}
    assert stats.as_dict()["skipped"] == {reason: 1}
    assert not [r for r in caplog.records if r.name.startswith("pypdf")]
    assert capfd.readouterr() == ("", "")
    good.unlink()


def test_bad_file_messages_say_what_is_wrong(tmp_path):
    def message(name: str, data: bytes) -> str:
        with pytest.raises(SpecializeError) as e:
            read_corpus(write(tmp_path / name, data))
        return one_line(e)

    assert "not UTF-8 text (byte 0xe9 on line 2)" in message("l.txt", b"ok\ncaf\xe9")
    assert "not UTF-8 text (byte 0xe9 on line 2)" in message("l.csv", b"text\ncaf\xe9\n")
    assert "binary file" in message("b.txt", b"a\x00b")
    assert "no text layer" in message("s.pdf", pdf_bytes(None))
    assert "OCR" in message("s2.pdf", pdf_bytes(None))
    assert "unreadable PDF (" in message("c.pdf", b"%PDF-1.4 junk")
    assert "the file is empty" in message("e.txt", b"")


def test_unsupported_single_file_and_missing_path_are_errors(tmp_path):
    doc = write(tmp_path / "report.docx", b"PK")
    with pytest.raises(SpecializeError) as e:
        read_corpus(doc)
    msg = one_line(e)
    assert str(doc) in msg and "unsupported document type '.docx'" in msg and ".pdf" in msg
    with pytest.raises(SpecializeError) as e:
        read_corpus(tmp_path / "nope", field="cpt.documents")
    assert one_line(e) == f"{tmp_path / 'nope'} field 'cpt.documents': no such file or folder"


def test_duplicate_ids_name_both_places(tmp_path):
    write(tmp_path / "d" / "a.md", "A md.")
    write(tmp_path / "d" / "a.txt", "A txt.")
    with pytest.raises(SpecializeError) as e:
        read_corpus(tmp_path / "d")
    msg = one_line(e)
    assert "duplicate document id 'a'" in msg
    assert str(tmp_path / "d" / "a.md") in msg and str(tmp_path / "d" / "a.txt") in msg
    f = write(
        tmp_path / "t.jsonl",
        '{"k": 1, "text": "x"}\n{"k": 2, "text": "y"}\n{"k": 1, "text": "z"}\n',
    )
    with pytest.raises(SpecializeError) as e:
        read_corpus(f, id_field="k")
    msg = one_line(e)
    assert msg.startswith(f"{f}:3 field 'synth.id_field': duplicate document id '1'")
    assert f"(first at {f}:1)" in msg


def test_nothing_left_is_an_error_that_says_what_was_skipped(tmp_path):
    write(tmp_path / "d" / "empty.txt", "")
    write(tmp_path / "d" / "image.png", b"\x89PNG")
    with pytest.raises(SpecializeError) as e:
        read_corpus(tmp_path / "d", on_bad_file="skip")
    msg = one_line(e)
    assert msg == (
        f"{tmp_path / 'd'} field 'synth.documents': no document with text "
        "(skipped: 1 unsupported type, 1 empty)"
    )
    (tmp_path / "e").mkdir()
    with pytest.raises(SpecializeError, match="no document with text$"):
        read_corpus(tmp_path / "e")
    f = write(tmp_path / "rows.csv", "text\n\n  \n")
    with pytest.raises(SpecializeError, match=r"skipped: 1 empty row"):
        read_corpus(f)
