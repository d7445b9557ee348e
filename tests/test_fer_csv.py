"""Row and header rules of the FER CSV format, one reason at a time."""
import io

import numpy as np
import pytest

from pipeline import fer_csv
from pipeline.errors import UserError
from tests.helpers import pixel_text, pixels_for

LAYOUT = fer_csv.Layout(("emotion", "pixels", "Usage"), 0, 1, 2)


def parse(line: str, config, layout=LAYOUT):
    return fer_csv.parse_row(line.encode(), layout, config)


def test_valid_row_round_trips(config):
    split, label, pixels = parse(f"4,{pixel_text(1)},PublicTest", config)
    assert (split, label) == ("eval", 4)
    np.testing.assert_array_equal(pixels, pixels_for(1))


def test_quoted_fields_and_spaces_are_accepted(config):
    split, label, _ = parse(f' 2 ,"{pixel_text(2)}", PrivateTest ', config)
    assert (split, label) == ("test", 2)


@pytest.mark.parametrize("line, reason", [
    (f"7,{pixel_text(0)},Training", "emotion '7' is not a class id 0-6"),
    (f"-1,{pixel_text(0)},Training", "emotion '-1' is not a class id 0-6"),
    (f"x,{pixel_text(0)},Training", "emotion 'x' is not a class id 0-6"),
    (f",{pixel_text(0)},Training", "empty emotion"),
    ("3,,Training", "empty pixels"),
    (f"3,{pixel_text(0)} 12,Training", "found 2305 pixel values, expected 2304 (48x48)"),
    ("3," + " ".join(["1"] * 2303) + ",Training", "found 2303 pixel values, expected 2304 (48x48)"),
    ("3," + " ".join(["1"] * 2303 + ["12.5"]) + ",Training",
     "pixels holds the non-integer value '12.5'"),
    ("3," + " ".join(["1"] * 2303 + ["-4"]) + ",Training", "pixels holds the non-integer value '-4'"),
    ("3," + " ".join(["abc"] + ["1"] * 2303) + ",Training",
     "pixels holds the non-integer value 'abc'"),
    ("3," + " ".join(["1"] * 2302 + ["2\r3"]) + ",Training",
     "pixels holds the non-integer value '2\\r3'"),
    ("3," + " ".join(["1"] * 10 + ["256"] + ["1"] * 2293) + ",Training",
     "pixel 10 has the value 256, outside 0-255"),
    (f"3,{pixel_text(0)},Validation", "Usage 'Validation' is not one of Training, PublicTest, PrivateTest"),
    (f"3,{pixel_text(0)},Training,extra", "expected 3 fields (emotion,pixels,Usage), found 4"),
    (f"3,{pixel_text(0)}", "expected 3 fields (emotion,pixels,Usage), found 2"),
    ("9" * 4301 + f",{pixel_text(0)},Training",  # past Python's int() limit: no ValueError
     "emotion '9999999999999999999999999999999999999999...' is not a class id 0-6"),
])
def test_bad_rows_name_their_reason(config, line, reason):
    with pytest.raises(fer_csv.RowError) as caught:
        parse(line, config)
    assert str(caught.value) == reason


def test_broken_quoting_is_a_row_error_not_a_crash(config):
    with pytest.raises(fer_csv.RowError, match="malformed CSV quoting"):
        parse('3,1 2\r3,"Training"', config)


def test_hash_split_depends_only_on_content(config):
    layout = fer_csv.Layout(("emotion", "pixels"), 0, 1, None)
    splits = [parse(f"{i % 7},{pixel_text(i)}", config, layout)[0] for i in range(600)]
    again = [parse(f"{(i + 1) % 7},  {pixel_text(i)} ", config, layout)[0] for i in range(600)]
    assert splits == again  # label and whitespace do not move an image between splits
    shares = {s: splits.count(s) / len(splits) for s in config.splits}
    for split, ratio in config.hash_split.items():
        assert abs(shares[split] - ratio) < 0.05, shares


@pytest.mark.parametrize("header, names", [
    (b"emotion,pixels,Usage\n", ("emotion", "pixels", "Usage")),
    (b"\xef\xbb\xbfemotion, Usage, pixels\r\n", ("emotion", "Usage", "pixels")),
    (b'"pixels","emotion"\n', ("pixels", "emotion")),
])
def test_header_variants(config, header, names):
    layout, length = fer_csv.read_header(io.BytesIO(header + b"rest"), "f.csv", config)
    assert layout.names == names and length == len(header)
    assert names[layout.pixels] == "pixels" and names[layout.label] == "emotion"


@pytest.mark.parametrize("content, words", [
    (b"", "is empty"),
    (b"label,image\n", "lacks the column(s) emotion, pixels"),
    (b"0,1 2 3,Training\n", "has no header"),
    (b"\x00\x01\xff\xfe" * 100 + b"\n", "not a text CSV"),
    (b"1 " * 40000, "longer than 64 KB"),
    (b"emotion,pixels,Usage\r0,1 2,Training\r", "bare carriage return"),
    (b"emotion\tpixels\tUsage\n", "tabs or semicolons"),
    ("emotion,pixels,Usage\n".encode("utf-16"), "UTF-16"),
])
def test_header_errors_are_user_errors(config, content, words):
    with pytest.raises(UserError) as caught:
        fer_csv.read_header(io.BytesIO(content), "in.csv", config)
    assert words in str(caught.value) and "in.csv" in str(caught.value)


def test_read_lines_bounds_an_endless_line():
    data = b"short\n" + b"9" * 5000 + b"\nlast"
    lines = list(fer_csv.read_lines(io.BytesIO(data), 2, None, max_line_bytes=100))
    assert [n for n, _ in lines] == [2, 3, 4]
    assert lines[0][1] == b"short" and lines[2][1] == b"last"
    too_long = lines[1][1]
    assert isinstance(too_long, fer_csv.TooLongLine)
    assert too_long.length == 5001 and len(too_long.head) == 101


def test_quarantine_reasons_keep_the_numbers_their_rows_share(tmp_path):
    """ExampleGen's counts group reasons that differ only in their numbers: a number all the
    rows share is shown, one that differs shows its range, none is a bare placeholder."""
    import json

    from components import example_gen

    reasons = ["expected 3 fields (emotion,pixels,Usage), found 4"] * 3 + [
        "found 2303 pixel values, expected 2304 (48x48)",
        "found 12 pixel values, expected 2304 (48x48)",
        "pixel 7 has the value 300, outside 0-255",
        "line is 1,048,600 bytes long, longer than any valid row (1,048,576 bytes at most)",
        "emotion '9' is not a class id 0-6",
    ]
    (tmp_path / "bad_rows-00000-of-00001.jsonl").write_text(
        "".join(json.dumps({"line": n, "reason": r}) + "\n" for n, r in enumerate(reasons)))
    assert example_gen._quarantine_reasons(str(tmp_path)) == {
        "expected 3 fields (emotion,pixels,Usage), found 4": 3,
        "found 12-2303 pixel values, expected 2304 (48x48)": 2,
        "pixel 7 has the value 300, outside 0-255": 1,
        "line is 1,048,600 bytes long, longer than any valid row (1,048,576 bytes at most)": 1,
        "emotion '9' is not a class id 0-6": 1,
    }


def test_an_unlabelled_header_is_read_for_predictions_only(config):
    layout, _ = fer_csv.read_header(io.BytesIO(b"Usage,PIXELS\n"), "p.csv", config,
                                    labelled=False)
    assert (layout.label, layout.pixels, layout.usage) == (None, 1, 0)
    with pytest.raises(UserError, match="lacks the column\\(s\\) emotion\\."):
        fer_csv.read_header(io.BytesIO(b"Usage,PIXELS\n"), "t.csv", config)
    with pytest.raises(UserError, match="lacks the column\\(s\\) pixels\\..*only the pixels "
                                        "column is needed here"):
        fer_csv.read_header(io.BytesIO(b"emotion,image\n"), "p.csv", config, labelled=False)


def test_a_file_or_folder_named_with_glob_characters_is_read_as_named(tmp_path):
    """faces[1].csv is that file, not the glob that would match faces1.csv; a folder likewise."""
    (tmp_path / "faces[1].csv").write_text("emotion,pixels\n")
    (tmp_path / "faces1.csv").write_text("emotion,pixels\n")
    assert fer_csv.input_files(str(tmp_path / "faces[1].csv")) == [str(tmp_path / "faces[1].csv")]
    (tmp_path / "drops[a]").mkdir()
    (tmp_path / "drops[a]" / "x.csv").write_text("emotion,pixels\n")
    assert fer_csv.input_files(str(tmp_path / "drops[a]")) == [str(tmp_path / "drops[a]" / "x.csv")]
    assert fer_csv.input_files(str(tmp_path / "faces[1-9].csv")) == [str(tmp_path / "faces1.csv")]
