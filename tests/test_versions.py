"""The version folders (bert_squad/versions.py): one answer to "which versions exist" for serve, servable and export."""
from __future__ import annotations

import pytest

from bert_squad import versions

pytestmark = pytest.mark.pure


def test_only_numbered_folders_from_1_up_are_versions(tmp_path):
    root = tmp_path / "bert_squad"
    assert (versions.numbers(root), versions.newest(root), versions.next_number(root)) == ([], None, 1)
    for name in ("2", "10", "0", "notes", ".3.partial-x1y2"):  # 0, names and an export in progress are not
        (root / name).mkdir(parents=True)
    (root / "11").write_text("a file, not a folder")
    assert versions.numbers(root) == [2, 10]  # numeric order, not "10" < "2"
    assert (versions.newest(root), versions.next_number(root)) == (10, 11)


def test_resolve_names_what_is_missing_and_what_to_do(tmp_path):
    root = tmp_path / "bert_squad"
    root.mkdir()
    with pytest.raises(versions.VersionError, match="servable_config.py not found"):
        versions.resolve(tmp_path, "bert_squad", 0)
    (root / "servable_config.py").write_text("")
    with pytest.raises(versions.VersionError, match="no exported model .*bert-squad-export CHECKPOINT"):
        versions.resolve(tmp_path, "bert_squad", 0)
    for n in (1, 3):
        (root / str(n)).mkdir()
        (root / str(n) / "metadata.json").write_text("{}")
    assert versions.resolve(tmp_path, "bert_squad", 0) == 3
    assert versions.resolve(tmp_path, "bert_squad", 1) == 1
    with pytest.raises(versions.VersionError, match=r"version 2 not found .*\[1, 3\]"):
        versions.resolve(tmp_path, "bert_squad", 2)
    (root / "4").mkdir()
    with pytest.raises(versions.VersionError, match="4 has no metadata.json"):
        versions.resolve(tmp_path, "bert_squad", 0)


def test_a_protobuf_is_complete_only_to_its_last_byte_and_with_a_graph(tmp_path):
    graph = bytes([7 << 3 | 2, 3]) + b"abc"  # field 7 (graph), length-delimited, 3 bytes
    other = bytes([1 << 3 | 0, 0x96, 0x01])  # field 1, varint 150
    path = tmp_path / "model.mindir"
    for data, complete in ((other + graph, True), (other, False), ((other + graph)[:-1], False), (b"", False),
                           (bytes([0x80]), False)):
        path.write_bytes(data)
        assert versions.complete_protobuf(path) is complete, data


def test_the_version_policy_names_the_newest_folder_or_one_number():
    latest, third = versions.Policy.parse("latest"), versions.Policy.parse("specific:3")
    assert latest.choose([1, 2, 5]) == 5 and latest.choose([]) is None
    assert third.choose([1, 2, 3, 5]) == 3 and third.choose([1, 2, 5]) is None
    assert (str(latest), str(third)) == ("latest", "specific:3")
    for bad in ("newest", "specific:", "specific:0", "specific:x", "specific:-1", ""):
        with pytest.raises(ValueError, match="'latest' or 'specific:N'"):
            versions.Policy.parse(bad)


def test_a_bad_version_policy_is_refused_by_the_serve_command(capsys):
    from bert_squad.server.options import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--version-policy", "newest"])
    assert "--version-policy: 'newest' is not a version policy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--poll-seconds", "-1"])
    assert "--poll-seconds must be 0 (off) or more" in capsys.readouterr().err
