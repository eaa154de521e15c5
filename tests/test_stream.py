"""The stream framing (xenapi/transport/stream.py): where documents end, in any chunking."""
import xmlrpc.client

import pytest

from xenapi.transport.stream import JSON, JUNK, XML, Document, Framer, documents, is_stream_command

CALL = xmlrpc.client.dumps(("OpaqueRef:x",), "VM.get_record").encode()       # with <?xml ...?> and newlines
BARE = b"<methodCall><methodName>VM.get_all</methodName><params><param><value></value></param></params></methodCall>"


def frame(data: bytes, max_bytes: int = 4096, chunk: int | None = None) -> list[tuple[str, bytes, str]]:
    chunks = iter([data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)])
    return [(d.kind, d.body, d.problem) for d in documents(lambda: next(chunks, b""), max_bytes)]


@pytest.mark.parametrize("chunk", [None, 1, 2, 5, 13, 64])
def test_concatenated_documents_with_nothing_between_split_in_any_chunking(chunk):
    assert frame(CALL.strip() + BARE + CALL.strip(), chunk=chunk) == [
        (XML, CALL.strip(), ""), (XML, BARE, ""), (XML, CALL.strip(), "")]


def test_whitespace_and_a_byte_order_mark_between_documents_are_skipped():
    assert frame(b"\n  \r\n\t" + BARE + b"\n\n\xef\xbb\xbf" + BARE + b"\n", chunk=1) == [(XML, BARE, "")] * 2


def test_end_tags_inside_comments_cdata_and_instructions_do_not_end_a_document():
    doc = (b"<methodCall><!-- </methodCall> --><methodName>x</methodName><params><param><value>"
           b"<![CDATA[</methodCall>]]></value></param></params><?pi </methodCall>?></methodCall>")
    assert frame(doc + BARE, chunk=7) == [(XML, doc, ""), (XML, BARE, "")]


def test_a_truncated_call_ends_where_the_next_call_begins():
    truncated = b"<methodCall><methodName>VM.get_all</methodName><params>"
    assert frame(truncated + BARE) == [(XML, truncated, ""), (XML, BARE, "")]
    declared = b'<?xml version="1.0"?>' + BARE
    assert frame(truncated + declared) == [(XML, truncated, ""), (XML, declared, "")]


def test_a_self_closing_root_and_a_stray_end_tag_are_documents_of_their_own():
    assert frame(b"<methodCall/></oops>" + BARE) == [(XML, b"<methodCall/>", ""), (XML, b"</oops>", ""),
                                                      (XML, BARE, "")]


def test_junk_runs_to_the_next_tag_or_the_end_of_its_line():
    docs = frame(b"hello " + BARE + b"bad line\n" + b'{"id":1}\n')
    assert [(kind, body) for kind, body, _ in docs] == [(JUNK, b"hello "), (XML, BARE), (JUNK, b"bad line\n"),
                                                         (JSON, b'{"id":1}')]
    assert docs[0][2] == "not an XML-RPC or JSON-RPC document: 'hello'"


def test_json_requests_are_lines_with_crlf_or_lf_and_the_last_needs_no_newline():
    assert frame(b'{"a":1}\r\n{"b":"x<y"}\n{"c":3}', chunk=3) == [
        (JSON, b'{"a":1}', ""), (JSON, b'{"b":"x<y"}', ""), (JSON, b'{"c":3}', "")]


@pytest.mark.parametrize("body", [
    b"<methodCall><methodName>" + b"x" * 20000 + b"</methodName></methodCall>",
    b"<methodCall><!--" + b"x" * 20000 + b"--></methodCall>",
    b"<methodCall><" + b"x" * 20000 + b"></methodCall>",
])
def test_an_oversized_document_is_refused_and_its_bytes_are_not_kept(body):
    framer = Framer(max_bytes=1000)
    most, docs = 0, []
    for i in range(0, len(body + BARE), 100):
        framer.feed((body + BARE)[i:i + 100])
        while doc := framer.next():
            docs.append(doc)
        most = max(most, len(framer._buf))
    assert docs == [Document(XML, b"", "the document is over 1000 bytes"), Document(XML, BARE, "")]
    assert most < 1200


def test_an_oversized_json_line_is_dropped_up_to_its_newline():
    assert frame(b'{"a":"' + b"x" * 5000 + b'"}\n{"b":1}\n', max_bytes=1000, chunk=100) == [
        (JSON, b"", "the document is over 1000 bytes"), (JSON, b'{"b":1}', "")]


def test_input_ending_inside_a_document_makes_it_broken():
    assert frame(BARE + b"<methodCall><methodName>x") == [
        (XML, BARE, ""), (XML, b"<methodCall><methodName>x", "the input ended inside the document")]


def test_a_document_is_handed_out_as_soon_as_it_is_complete():
    framer = Framer(4096)
    framer.feed(BARE[:-1])
    assert framer.next() is None
    framer.feed(BARE[-1:])
    assert framer.next() == Document(XML, BARE, "")       # no need for more input, or for the end
    assert framer.next() is None and not framer.ended


@pytest.mark.parametrize("command, ok", [("xenapi", True), ("xenapi stdio", True), ("/usr/bin/xenapi stdio", True),
                                         ("  xenapi  ", True), ("ls", False), ("xenapi serve", False),
                                         ("xenapi stdio --user root", False), ("", False), ("notxenapi", False)])
def test_stream_commands(command, ok):
    assert is_stream_command(command) is ok
