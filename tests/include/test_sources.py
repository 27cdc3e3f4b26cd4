from __future__ import annotations

import gzip
import http.server
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import fsspec
import pytest

from include.harvest import hooks
from include.harvest.listroots import configured_roots, normalise_root, parse_list_roots
from include.harvest.models import Status, UrlItem
from include.harvest.sources import (
    SourceError,
    SourceFormatError,
    SourceNotAllowed,
    SourceNotFound,
    check_source_allowed,
    list_path_for,
    parse_manual,
    read_list,
    read_list_for_date,
    read_remote_list,
    read_table,
)

pytest_plugins = ["tests.include.db_fixtures"]

DAY = date(2026, 1, 5)

TXT_LIST = """\
# daily list for 2026-01-05

https://example.com/a.jpg
HTTPS://EXAMPLE.COM:443/a.jpg#dup
not a url
https://example.com/b.jpg   # the second picture
ftp://example.com/c.jpg
   https://cdn.example.org/c.png
"""


def urls(items: list[UrlItem]) -> list[str]:
    return [item.url for item in items]


def test_txt_list_skips_comments_and_blanks_and_rejects_bad_lines_with_line_numbers(tmp_path: Path) -> None:
    (tmp_path / "2026-01-05.txt").write_text(TXT_LIST)

    read = read_list_for_date(str(tmp_path), DAY)

    assert read.origin == str(tmp_path / "2026-01-05.txt")
    assert urls(read.items) == [
        "https://example.com/a.jpg",
        "https://example.com/b.jpg",
        "https://cdn.example.org/c.png",
    ]
    assert [item.line for item in read.items] == [3, 6, 8]
    assert read.duplicates == 1
    assert [(r.url, r.line, r.status) for r in read.rejected] == [
        ("not a url", 5, Status.REJECTED),
        ("ftp://example.com/c.jpg", 7, Status.REJECTED),
    ]
    assert read.rejected[0].error is not None and read.rejected[0].error.startswith("line 5: ")
    assert (
        read.rejected[1].error == "line 7: scheme 'ftp:' is not allowed: only http and https URLs are fetched"
    )


def test_csv_list_keeps_other_columns_as_meta(tmp_path: Path) -> None:
    (tmp_path / "2026-01-05.csv").write_text(
        'id,URL,caption\n1,https://example.com/a.jpg,"a cat, sleeping"\n2,,no url here\n'
        "3,https://example.com/b.jpg,\n4,https://Example.com/a.jpg,again\n"
    )

    read = read_list_for_date(str(tmp_path), DAY)

    assert read.items == [
        UrlItem("https://example.com/a.jpg", 2, {"id": "1", "caption": "a cat, sleeping"}),
        UrlItem("https://example.com/b.jpg", 4, {"id": "3", "caption": ""}),
    ]
    assert read.duplicates == 1
    [empty] = read.rejected
    assert (empty.line, empty.error, empty.meta) == (
        3,
        "line 3: the url column is empty",
        {"id": "2", "caption": "no url here"},
    )


def test_csv_without_url_column_names_the_file_and_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "2026-01-05.csv"
    path.write_text("link,caption\nhttps://example.com/a.jpg,x\n")

    with pytest.raises(SourceFormatError) as caught:
        read_list_for_date(str(tmp_path), DAY)

    assert str(path) in str(caught.value)
    assert "no 'url' column" in str(caught.value)
    assert "link, caption" in str(caught.value)


@pytest.mark.parametrize("name", ["2026-01-05.txt.gz", "2026-01-05.csv.gz"])
def test_gzipped_lists_are_read(tmp_path: Path, name: str) -> None:
    body = "https://example.com/a.jpg\nhttps://example.com/b.jpg\n"
    if name.startswith("2026-01-05.csv"):
        body = "url\n" + body
    (tmp_path / name).write_bytes(gzip.compress(body.encode()))

    read = read_list_for_date(str(tmp_path), DAY)

    assert urls(read.items) == ["https://example.com/a.jpg", "https://example.com/b.jpg"]
    assert read.origin.endswith(name)


def test_missing_list_names_every_path_looked_for(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound) as caught:
        read_list_for_date(str(tmp_path), DAY)

    message = str(caught.value)
    for suffix in (".txt", ".txt.gz", ".csv", ".csv.gz"):
        assert str(tmp_path / f"2026-01-05{suffix}") in message
    assert caught.value.candidates == list_path_for(str(tmp_path), DAY)
    assert isinstance(caught.value, FileNotFoundError)


def test_missing_base_folder_is_said(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound, match="itself does not exist"):
        read_list_for_date(str(tmp_path / "nowhere"), DAY)


def test_file_uri_base(tmp_path: Path) -> None:
    (tmp_path / "2026-01-05.txt").write_text("https://example.com/a.jpg\n")

    read = read_list_for_date(tmp_path.as_uri(), DAY)

    assert read.origin == f"{tmp_path.as_uri()}/2026-01-05.txt"
    assert urls(read.items) == ["https://example.com/a.jpg"]


@pytest.fixture
def memory_base() -> Iterator[str]:
    base = f"memory://lists-{uuid.uuid4().hex[:8]}"
    yield base
    fs = fsspec.filesystem("memory")
    fs.rm(base.removeprefix("memory://"), recursive=True)


def test_memory_uri_base_and_preference_order(memory_base: str) -> None:
    fs = fsspec.filesystem("memory")
    with fs.open(f"{memory_base}/2026-01-05.csv", "w") as f:
        f.write("url\nhttps://example.com/from-csv.jpg\n")
    with fs.open(f"{memory_base}/2026-01-05.txt.gz", "wb") as f:
        f.write(gzip.compress(b"https://example.com/from-txt-gz.jpg\n"))

    read = read_list_for_date(memory_base + "/", DAY)

    # .txt.gz comes before .csv in the documented order
    assert urls(read.items) == ["https://example.com/from-txt-gz.jpg"]
    assert read.origin == f"{memory_base}/2026-01-05.txt.gz"


def test_read_list_of_an_explicit_uri(memory_base: str) -> None:
    fs = fsspec.filesystem("memory")
    with fs.open(f"{memory_base}/extra.csv", "w") as f:
        f.write("url;caption\nhttps://example.com/a.jpg;x\n")  # semicolons: one column, "url;caption"
    with pytest.raises(SourceFormatError, match="no 'url' column"):
        read_list(f"{memory_base}/extra.csv")

    with pytest.raises(SourceNotFound, match="no URL list at"):
        read_list(f"{memory_base}/absent.txt")


def test_bom_and_undecodable_bytes_reject_only_their_line(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(
        b"\xef\xbb\xbfhttps://example.com/a.jpg\nhttps://example.com/\xff.jpg\nhttps://example.com/b.jpg\n"
    )

    read = read_list(str(path))

    assert urls(read.items) == ["https://example.com/a.jpg", "https://example.com/b.jpg"]
    [bad] = read.rejected
    assert bad.line == 2
    assert bad.url == "https://example.com/\\xff.jpg"  # storable in Postgres, still recognisable
    assert "not valid UTF-8" in (bad.error or "")


def test_empty_list_is_an_empty_read_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "2026-01-05.txt").write_text("# nothing today\n\n")

    read = read_list_for_date(str(tmp_path), DAY)

    assert (read.items, read.rejected, read.duplicates) == ([], [], 0)


def test_identical_bad_lines_are_one_rejected_row(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("bad line\nbad line\n\x00\n")

    read = read_list(str(path))

    assert [(r.url, r.line) for r in read.rejected] == [("bad line", 1), ("\\x00", 3)]
    assert read.duplicates == 1


def test_a_100k_line_gzipped_list_is_read_in_full(tmp_path: Path) -> None:
    # Its speed is a figure, not an assertion (timed tests flake on a shared box).
    path = tmp_path / "2026-01-05.txt.gz"
    lines = "".join(f"https://img{i % 50}.example.com/p/{i}.jpg?s=L\n" for i in range(100_000))
    path.write_bytes(gzip.compress(lines.encode()))

    read = read_list_for_date(str(tmp_path), DAY)

    assert len(read.items) == 100_000 and not read.rejected
    assert read.items[0] == UrlItem("https://img0.example.com/p/0.jpg?s=L", 1)
    assert read.items[-1] == UrlItem("https://img49.example.com/p/99999.jpg?s=L", 100_000)


# --- remote lists --------------------------------------------------------------------------------


class _ListHandler(http.server.BaseHTTPRequestHandler):
    bodies: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        body = self.bodies.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"not found")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def list_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ListHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _urllib_fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read())


def test_remote_txt_and_csv_lists_over_http(list_server: str) -> None:
    _ListHandler.bodies = {
        "/lists/today.txt": b"# remote\nhttps://example.com/a.jpg\nnope\n",
        "/lists/today.csv.gz": gzip.compress(b"url,tag\nhttps://example.com/b.jpg,x\n"),
    }

    txt = read_remote_list(f"{list_server}/lists/today.txt", _urllib_fetch)
    csv_gz = read_remote_list(f"{list_server}/lists/today.csv.gz", _urllib_fetch)

    assert txt.origin == f"{list_server}/lists/today.txt"
    assert urls(txt.items) == ["https://example.com/a.jpg"]
    assert [(r.url, r.line) for r in txt.rejected] == [("nope", 3)]
    assert csv_gz.items == [UrlItem("https://example.com/b.jpg", 2, {"tag": "x"})]


def test_remote_list_format_sniffed_from_content_when_url_says_nothing() -> None:
    served = {
        "https://lists.example.com/export?day=2026-01-05": b"id,url\n7,https://example.com/c.jpg\n",
        "https://lists.example.com/plain": gzip.compress(b"https://example.com/d.jpg\n"),
    }

    csv_read = read_remote_list("https://lists.example.com/export?day=2026-01-05", served.__getitem__)
    txt_read = read_remote_list("https://lists.example.com/plain", served.__getitem__)

    assert csv_read.items == [UrlItem("https://example.com/c.jpg", 2, {"id": "7"})]
    assert urls(txt_read.items) == ["https://example.com/d.jpg"]


def test_remote_list_with_an_unusable_url_says_so() -> None:
    with pytest.raises(SourceError, match="remote list 'ftp://example.com/l.txt' is not usable"):
        read_remote_list("ftp://example.com/l.txt", lambda url: b"")


# --- manual --------------------------------------------------------------------------------------


def test_manual_text_is_one_url_a_line() -> None:
    read = parse_manual(
        "https://example.com/a.jpg\n# note\n\n  https://EXAMPLE.com/a.jpg  # again\nhttps://example.com/b.jpg\nnope"
    )

    assert urls(read.items) == ["https://example.com/a.jpg", "https://example.com/b.jpg"]
    assert [item.line for item in read.items] == [1, 5]
    assert read.duplicates == 1
    assert [(r.url, r.line) for r in read.rejected] == [("nope", 6)]
    assert read.origin == "urls param"


def test_a_line_with_spaces_is_one_rejected_row_naming_the_line() -> None:
    # Before: "not a url" became three rejected rows, "not", "a" and "url".
    read = parse_manual(
        "https://example.com/a.jpg\nnot a url\nhttps://example.com/b.jpg https://example.com/c.jpg\n"
    )

    assert urls(read.items) == ["https://example.com/a.jpg"]
    assert [(r.url, r.line) for r in read.rejected] == [
        ("not a url", 2),
        ("https://example.com/b.jpg https://example.com/c.jpg", 3),
    ]
    assert all(r.status == Status.REJECTED for r in read.rejected)
    assert (read.rejected[0].error or "").startswith(
        "line 2: contains whitespace at character 4; put one URL per line"
    )


def test_manual_list_entries() -> None:
    read = parse_manual(
        ["https://example.com/a.jpg", "  ", "https://example.com/a b.jpg", "https://example.com/a.jpg"]
    )

    assert urls(read.items) == ["https://example.com/a.jpg"]
    [bad] = read.rejected
    assert bad.line == 3 and (bad.error or "").startswith("entry 3: contains whitespace")
    assert read.duplicates == 1


# --- table ---------------------------------------------------------------------------------------


def test_read_table_selects_the_day(harvest_conn: Any) -> None:
    with harvest_conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO harvest.url_sources (list_date, url, meta) VALUES
                ('2026-01-05', 'https://example.com/b.jpg', '{"k": 1}'),
                ('2026-01-05', 'https://EXAMPLE.com/b.jpg#x', NULL),
                ('2026-01-05', 'mailto:someone@example.com', NULL),
                ('2026-01-06', 'https://example.com/other-day.jpg', NULL)
            """
        )
    harvest_conn.commit()

    read = read_table(harvest_conn, DAY)

    # bytewise order: 'https://EXAMPLE…' (row 1) comes before 'https://example…' (row 2, a duplicate)
    assert read.items == [UrlItem("https://example.com/b.jpg", 1, None)]
    assert read.duplicates == 1
    [bad] = read.rejected
    assert bad.url == "mailto:someone@example.com" and (bad.error or "").startswith("row 3: ")
    assert "2026-01-05" in read.origin

    with pytest.raises(SourceNotFound, match="no rows in harvest.url_sources"):
        read_table(harvest_conn, date(2026, 1, 7))


def test_a_corrupt_gzip_list_is_a_format_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "2026-01-05.txt.gz"
    path.write_bytes(gzip.compress(b"https://example.com/a.jpg\n" * 1000)[:-20])  # truncated

    with pytest.raises(SourceFormatError, match=r"2026-01-05.txt.gz is not a complete gzip file"):
        read_list_for_date(str(tmp_path), DAY)


def test_very_long_bad_lines_are_cut_to_a_storable_unique_key() -> None:
    long_ascii = "x" * 5000
    long_unicode = "ü" * 1500  # 1500 characters but 3000 bytes: the index limit is in bytes

    read = parse_manual([long_ascii, long_ascii + "y", long_unicode])

    keys = [r.url for r in read.rejected]
    assert len(keys) == 3 and len(set(keys)) == 3
    assert all(len(key.encode("utf-8")) <= 2048 for key in keys)
    assert keys[1].endswith("... (cut, line 2)")


# --- allowed roots -------------------------------------------------------------------------------


def test_a_list_outside_the_roots_is_refused_naming_it_and_the_setting(tmp_path: Path) -> None:
    root = tmp_path / "lists"
    root.mkdir()
    (root / "ok.txt").write_text("https://example.com/a.jpg\n")

    check_source_allowed((root / "ok.txt").as_uri(), [root.as_uri()])
    check_source_allowed((root / "sub" / "later.txt").as_uri(), [root.as_uri()])  # need not exist yet
    with pytest.raises(SourceNotAllowed) as caught:
        check_source_allowed("file:///etc/passwd", [root.as_uri()])
    assert "'file:///etc/passwd'" in str(caught.value)
    assert "HARVEST_LIST_ROOTS" in str(caught.value)
    assert isinstance(caught.value, SourceError)


@pytest.mark.parametrize(
    "source",
    [
        "{root}/../secret.txt",  # '..' out of the root
        "{root}/sub/../../secret.txt",
        "{root}/sub/../ok.txt",  # '..' is refused even when it stays inside
        "{root}",  # the folder itself is not a list
        "{root}/",
        "{root}-other/list.txt",  # a sibling whose name starts like the root
        "{root}/ok.txt::memory://x",  # fsspec chaining
        "/absolute/path/without/scheme.txt",
        "file",
        "ftp://example.com/lists/ok.txt",
    ],
)
def test_dot_dot_siblings_and_other_schemes_cannot_reach_outside(tmp_path: Path, source: str) -> None:
    root = tmp_path / "lists"
    (root / "sub").mkdir(parents=True)
    with pytest.raises(SourceNotAllowed):
        check_source_allowed(source.format(root=root.as_uri()), [root.as_uri()])


def test_a_symlink_cannot_lead_out_of_a_root(tmp_path: Path) -> None:
    root = tmp_path / "lists"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    (root / "evil.txt").symlink_to(secret)
    (root / "evil-dir").symlink_to(tmp_path)
    (root / "real.txt").write_text("https://example.com/a.jpg\n")
    (root / "alias.txt").symlink_to(root / "real.txt")

    for source in (root / "evil.txt", root / "evil-dir" / "secret.txt"):
        with pytest.raises(SourceNotAllowed):
            check_source_allowed(source.as_uri(), [root.as_uri()])
    check_source_allowed((root / "alias.txt").as_uri(), [root.as_uri()])  # a symlink inside is fine


def test_object_store_roots_compare_normalised_prefixes() -> None:
    roots = ["s3://bucket/lists/", "memory://team-a"]

    check_source_allowed("s3://bucket/lists/2026/today.txt", roots)
    check_source_allowed("memory://team-a/x.csv", roots)
    for source in (
        "s3://bucket/lists-private/x.txt",
        "s3://bucket/other/x.txt",
        "s3://other-bucket/lists/x.txt",
        "s3://bucket/lists/../secret/x.txt",
        "gcs://bucket/lists/x.txt",
        "memory://team-b/x.csv",
    ):
        with pytest.raises(SourceNotAllowed):
            check_source_allowed(source, roots)


def test_list_roots_setting_is_comma_separated_uris_or_absolute_paths() -> None:
    assert parse_list_roots(" file:///srv/lists/ , s3://bucket/lists,/opt/more/ ,") == [
        "file:///srv/lists",
        "s3://bucket/lists",
        "file:///opt/more",
    ]
    assert parse_list_roots(None) == parse_list_roots("") == []
    for bad in ("relative/lists", "file:///", "s3://", "https://lists.example.com/", "file:///srv/../etc"):
        with pytest.raises(ValueError, match="HARVEST_LIST_ROOTS"):
            parse_list_roots(bad)
    assert normalise_root("/srv//lists/./") == "file:///srv/lists"


def test_the_roots_are_the_url_list_base_then_the_operators_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARVEST_URL_LIST_URI", raising=False)
    monkeypatch.delenv("HARVEST_LIST_ROOTS", raising=False)
    # The same default folder as the one read_sources reads the dates' lists from.
    assert configured_roots() == [hooks.deployment_uris()["url_list_uri"]]
    assert configured_roots(
        {
            "HARVEST_URL_LIST_URI": "s3://b/url_lists/",
            "HARVEST_LIST_ROOTS": "file:///srv/lists,s3://b/url_lists",
        }
    ) == ["s3://b/url_lists", "file:///srv/lists"]
