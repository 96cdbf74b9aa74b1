"""parse() against the behaviour of OpenSM 3.3.23's partitions.conf parser, quirk by quirk.

Each test names the C function whose behaviour it pins down; the corpus
(verified against a real OpenSM in test_corpus_opensm.py) covers the same
ground end to end.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pkeyd.opensm.parse import FGETS_MAX, _run, parse
from pkeyd.opensm.parsed import GroupFlags, ParsedPartition, ParseResult
from pkeyd.opensm.partition_builder import strtoul
from tests.opensm.corpus import CorpusFile, Verdict, corpus

G1, G2, G3 = "0x0002c90300000101", "0x0002c90300000201", "0x0002c90300000301"
D = "Default=0x7fff : ALL, SELF=full ;\n"


def codes(result: ParseResult) -> list[str]:
    return [d.code for d in result.diagnostics]


def only(text: str | bytes, pkey: int, **options: bool) -> ParsedPartition:
    result = parse(text, **options)
    assert result.ok, result.diagnostics
    partition = result.partition(pkey)
    assert partition is not None
    return partition


def members(partition: ParsedPartition) -> list[tuple[str, str]]:
    return [(e.target, e.membership) for e in partition.entries]


# -- the corpus ---------------------------------------------------------------


@pytest.mark.parametrize("item", corpus(), ids=lambda item: item.name)
def test_corpus_file_verdict_matches_its_header(item: CorpusFile) -> None:
    assert Verdict.of(item.parse()) == item.expect


def test_corpus_is_large_enough() -> None:
    verdicts = [item.expect for item in corpus()]
    assert len(verdicts) >= 30
    assert sum(v.fatal is not None for v in verdicts) >= 10
    assert sum(v.fatal is None and not v.warnings for v in verdicts) >= 10


# -- statements and members ---------------------------------------------------


def test_plain_statement() -> None:
    result = parse(f"{D}tenant=0x0a12, ipoib : {G1}=full, {G2}=limited, {G3} ;\n")
    assert result.ok
    assert result.diagnostics == ()
    default, tenant = result.partitions
    assert (default.pkey, default.name, default.ipoib) == (0x7FFF, "Default", False)
    assert members(default) == [("ALL", "limited"), ("SELF", "full")]
    assert (tenant.pkey, tenant.name, tenant.lines) == (0x0A12, "tenant", (2,))
    assert members(tenant) == [(G1, "full"), (G2, "limited"), (G3, "limited")]
    assert tenant.broadcast == GroupFlags(q_key=0x0B1B)  # IPoIB Q_Key by default
    assert GroupFlags() == GroupFlags(4, 3, 0, 0, 0, 0, 0)


def test_str_and_bytes_parse_alike() -> None:
    text = f"{D}a=0x10 : {G1}=full ;\n"
    assert parse(text) == parse(text.encode())


def test_members_span_lines_until_the_semicolon() -> None:
    text = f"{D}a=0x10 :\n  {G1}=full,\n\n  # a comment\n  {G2} # another\n , ;\n"
    assert members(only(text, 0x10)) == [(G1, "full"), (G2, "limited")]


def test_header_needs_its_colon_on_its_line() -> None:
    result = parse(f"{D}a=0x10\n : {G1} ;\n")
    assert result.fatal is not None
    assert (result.fatal.code, result.fatal.line) == ("no_partition_definition", 2)


def test_several_statements_on_one_line() -> None:
    result = parse(f"a=0x10 : {G1}=full ; b=0x20 : {G2} ; a=0x10 : {G3} ;\n")
    assert [p.pkey for p in result.partitions] == [0x10, 0x20]
    assert members(result.partitions[0]) == [(G1, "full"), (G3, "limited")]


def test_uppercase_hex_guid_is_canonicalised() -> None:
    assert members(only("a=0x10 : 0X0002C903000001AB=full ;", 0x10)) == [
        ("0x0002c903000001ab", "full")
    ]


def test_short_guid_and_trailing_blanks() -> None:
    part = only("a=0x10 :  0x2c90300000101 =  full  ,0x5\t;\n", 0x10)
    assert members(part) == [(G1, "full"), ("0x0000000000000005", "limited")]


# -- suffixes, keywords and prefixes (partition_add_port) ---------------------


@pytest.mark.parametrize(
    ("suffix", "membership", "code"),
    [
        ("full", "full", None),
        ("f", "full", "prefix_matched"),
        ("ful", "full", "prefix_matched"),
        ("", "full", "empty_membership"),
        ("limited", "limited", None),
        ("l", "limited", "prefix_matched"),
        ("FULL", "limited", "unknown_membership"),
        ("fully", "limited", "unknown_membership"),
        ("b", "full", "prefix_matched"),
    ],
)
def test_membership_suffix(suffix: str, membership: str, code: str | None) -> None:
    result = parse(f"a=0x10 : {G1}={suffix} ;")
    assert members(result.partitions[0]) == [(G1, membership)]
    assert (code in codes(result)) if code else codes(result) == []


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("ALL", "ALL"),
        ("A", "ALL"),
        ("AL", "ALL"),
        ("ALL_", "ALL_CAS"),
        ("ALL_C", "ALL_CAS"),
        ("ALL_S", "ALL_SWITCHES"),
        ("ALL_R", "ALL_ROUTERS"),
        ("S", "SELF"),
        ("SEL", "SELF"),
        ("SELF", "SELF"),
    ],
)
def test_keywords_are_prefix_matched(name: str, target: str) -> None:
    result = parse(f"a=0x10 : {name}=full ;")
    assert members(result.partitions[0]) == [(target, "full")]
    assert codes(result) == ([] if name == target else ["prefix_matched"])


@pytest.mark.parametrize("name", ["N", "NO", "NONE"])
def test_none_adds_nobody(name: str) -> None:
    result = parse(f"a=0x10 : {name}, {G1} ;")
    assert members(result.partitions[0]) == [(G1, "limited")]


@pytest.mark.parametrize(
    ("member", "hint"),
    [
        ("all", "case-sensitive"),
        ("Self", ""),
        ("ALLX", ""),
        ("NONEX", ""),
        ("0002c90300000101", "0x"),
        ("0x0000000000000000", "GUID 0"),
        ("0", "GUID 0"),
        ("0x", ""),
        ("12ab", ""),
        (f"{G1}\r", ""),
    ],
)
def test_bad_port_guid_is_fatal(member: str, hint: str) -> None:
    result = parse(f"{D}a=0x10 : {G1}, {member} ;\n")
    assert result.fatal is not None
    assert (result.fatal.code, result.fatal.line) == ("bad_guid", 2)
    assert hint in result.fatal.message
    assert members(result.partitions[1]) == [(G1, "limited")]  # parsed before the error


def test_octal_and_decimal_guids() -> None:
    result = parse("a=0x10 : 026220140000002001=full, 783964675506945, 0x1 ;")
    assert members(result.partitions[0]) == [
        ("0x0002c90300000401", "full"),
        (G3, "limited"),
        ("0x0000000000000001", "limited"),
    ]
    assert codes(result) == ["octal_guid", "decimal_guid"]


def test_negative_guid_wraps() -> None:
    assert members(only("a=0x10 : -1 ;", 0x10)) == [("0xffffffffffffffff", "limited")]


def test_both_means_full_without_allow_both_pkeys() -> None:
    text = f"a=0x10 : {G1}=both ;\nb=0x20, defmember=both : {G2} ;\n"
    plain = parse(text)
    assert [members(p) for p in plain.partitions] == [[(G1, "full")], [(G2, "full")]]
    assert codes(plain) == ["both_not_allowed", "both_not_allowed"]
    allowed = parse(text, allow_both_pkeys=True)
    assert [members(p) for p in allowed.partitions] == [[(G1, "both")], [(G2, "both")]]
    assert allowed.diagnostics == ()


def test_defmember_per_statement_and_empty_value_is_full() -> None:
    text = (
        f"a=0x10, defmember=full : {G1}, {G2}=limited ;\n"
        f"a=0x10 : {G3} ;\n"
        f"b=0x20, defmember= : {G1} ;\n"
    )
    result = parse(text)
    assert members(result.partitions[0]) == [(G1, "full"), (G2, "limited"), (G3, "limited")]
    assert members(result.partitions[1]) == [(G1, "full")]
    assert codes(result) == ["empty_membership"]


def test_invalid_defmember_is_ignored() -> None:
    result = parse(f"a=0x10, defmember=owner, defmember : {G1} ;")
    assert members(result.partitions[0]) == [(G1, "limited")]
    assert codes(result) == ["invalid_defmember", "invalid_defmember"]


def test_missing_semicolon_makes_a_header_a_member() -> None:
    fatal = parse(f"{D}a=0x10 : {G1}\nb=0x20 : {G2} ;\n")
    assert fatal.fatal is not None
    assert fatal.fatal.code == "bad_guid"
    assert "missing_semicolon" in codes(fatal)
    quiet = parse(f"{D}a=0x10 : {G1}=full\nA=0x20 : {G2} ;\n")  # "A" is ALL
    assert quiet.ok
    assert members(quiet.partitions[1]) == [(G1, "full"), ("ALL", "limited")]


# -- headers, flags and PKeys (partition_add_flag, partition_create) ----------


@pytest.mark.parametrize(
    ("flags", "expected", "warnings"),
    [
        ("mtu=5, rate=7", GroupFlags(mtu=5, rate=7, q_key=0x0B1B), []),
        ("m=5", GroupFlags(mtu=5, q_key=0x0B1B), ["prefix_matched"]),
        ("=5", GroupFlags(mtu=5, q_key=0x0B1B), ["empty_flag"]),
        ("r=6", GroupFlags(rate=6, q_key=0x0B1B), ["prefix_matched"]),
        (
            "Q=0x10, T=4, F=0x12",
            GroupFlags(q_key=0x10, tclass=4, flow_label=0x12),
            ["prefix_matched"] * 3,
        ),
        ("TClass=300", GroupFlags(tclass=44, q_key=0x0B1B), ["tclass_truncated"]),
        ("FlowLabel=0x100000", GroupFlags(q_key=0x0B1B), ["invalid_flag_value"]),
        # OpenSM stores an unusable MTU or rate, then fails to create the group
        (
            "mtu=",
            None,
            ["invalid_flag_value", "flag_value_out_of_range", "mgroup_not_created"],
        ),
        ("mtu", GroupFlags(q_key=0x0B1B), ["missing_value"]),
        ("mtu=4x", GroupFlags(q_key=0x0B1B), ["suspicious_value"]),
        ("mtu=010", None, ["octal_number", "flag_value_out_of_range", "mgroup_not_created"]),
        ("rate=1", None, ["flag_value_out_of_range", "mgroup_not_created"]),
        ("mtu=0x104", GroupFlags(mtu=0x104, q_key=0x0B1B), ["flag_value_out_of_range"]),
        (", ,", GroupFlags(q_key=0x0B1B), []),
    ],
)
def test_group_flags(flags: str, expected: GroupFlags | None, warnings: list[str]) -> None:
    result = parse(f"a=0x10, ipoib, {flags} : {G1} ;")
    assert result.partitions[0].broadcast == expected
    assert codes(result) == warnings


def test_s_is_scope_not_sl_and_scope_skips_the_broadcast_group() -> None:
    result = parse(f"a=0x10, ipoib, s=5 :\n mgid=ff12::1,\n {G1} ;\n")
    part = result.partitions[0]
    assert part.broadcast is not None
    assert part.broadcast.scope_mask == 0
    assert [g.flags.scope_mask for g in part.mgroups] == [1 << 5]
    assert codes(result) == ["prefix_matched", "scope_ignored_for_broadcast"]


def test_sl_forced_to_zero_without_qos() -> None:
    text = f"a=0x10, ipoib, sl=3 :\n mgid=ff12::1, sl=5,\n {G1} ;\n"
    plain = parse(text)
    assert plain.partitions[0].sl == 0
    assert plain.partitions[0].mgroups[0].flags.sl == 5  # mgid flags are not forced
    assert codes(plain) == ["sl_without_qos"]
    qos = parse(text, qos=True)
    assert qos.partitions[0].sl == 3
    assert qos.diagnostics == ()


@pytest.mark.parametrize("value", ["16", "0x100000003", "3x", ""])
def test_sl_values_out_of_range_are_ignored(value: str) -> None:
    # (unsigned) truncation first: 0x100000003 is 3 for OpenSM
    result = parse(f"a=0x10, sl={value} : {G1} ;", qos=True)
    assert result.partitions[0].sl == (3 if value == "0x100000003" else 0)


@pytest.mark.parametrize(
    ("flag", "code"),
    [("indx", "unknown_flag"), ("index0", "unknown_flag"), ("IPoIB", "unknown_flag")],
)
def test_unknown_flags_are_ignored(flag: str, code: str) -> None:
    result = parse(f"a=0x10, {flag} : {G1} ;")
    assert codes(result) == [code]
    assert not result.partitions[0].ipoib
    assert not result.partitions[0].entries[0].indx0


def test_i_is_ipoib_and_indx0_is_exact() -> None:
    result = parse(f"a=0x10, i, indx0 : {G1} ;")
    assert result.partitions[0].ipoib
    assert result.partitions[0].entries[0].indx0
    assert codes(result) == ["prefix_matched"]


@pytest.mark.parametrize(
    ("pkey", "expected", "warnings"),
    [
        ("0x0a12", 0x0A12, []),
        ("2578", 0x0A12, []),
        ("010", 0x0008, ["octal_number"]),
        ("0x18001", 0x0001, ["pkey_truncated", "pkey_full_bit"]),
        ("0x8a12", 0x0A12, ["pkey_full_bit"]),
        # 0xffff is the Default PKey: "a" merges into Default
        (
            "-1",
            0x7FFF,
            ["negative_number", "pkey_truncated", "pkey_full_bit", "duplicate_pkey_name"],
        ),
    ],
)
def test_pkey_is_base0_cast_to_16_bits_and_masked(
    pkey: str, expected: int, warnings: list[str]
) -> None:
    result = parse(f"a={pkey} : {G1} ;")
    assert [p.pkey for p in result.partitions] == [expected]
    assert codes(result) == warnings


@pytest.mark.parametrize("pkey", ["0x", "12ab", "", "08"])
def test_unusable_pkey_is_fatal(pkey: str) -> None:
    result = parse(f"a={pkey} : {G1} ;")
    assert result.fatal is not None
    assert result.fatal.code == "bad_partition_definition"


def test_name_starting_with_a_digit_is_the_pkey() -> None:
    result = parse(f"0x0a12 : {G1} ;\n")
    assert [(p.pkey, p.name) for p in result.partitions] == [(0x0A12, "0a12")]
    fatal = parse(f"1st_floor : {G1} ;\n").fatal
    assert fatal is not None
    assert fatal.code == "bad_partition_definition"


def test_names_are_cut_to_31_bytes() -> None:
    long = "n" * 40
    result = parse(f"{long}=0x10 : {G1} ;")
    assert result.partitions[0].name == "n" * 31
    assert codes(result) == ["name_truncated"]


def test_duplicate_pkey_merges_first_name_kept_last_sl() -> None:
    text = f"a=0x10, sl=1 : {G1} ;\nb=0x10, sl=2 : {G2} ;\n"
    result = parse(text, qos=True)
    (part,) = result.partitions
    assert (part.name, part.sl, part.lines) == ("a", 2, (1, 2))
    assert members(part) == [(G1, "limited"), (G2, "limited")]
    assert codes(result) == ["duplicate_pkey_name"]


def test_missing_pkey_is_generated_or_found_by_name() -> None:
    result = parse(f"x=0x0001 : {G1} ;\ny : {G1} ;\nz : {G2} ;\ny : {G3} ;\nDefault : ALL=full ;\n")
    assert [(p.name, p.pkey) for p in result.partitions] == [
        ("x", 1),
        ("y", 2),
        ("z", 3),
        ("Default", 0x7FFF),
    ]
    assert codes(result) == ["pkey_omitted"] * 4


def test_name_lookup_follows_opensms_byte_swapped_order() -> None:
    result = parse(f"t=0x0001 : {G1} ;\nt=0x0100 : {G2} ;\nt : {G3} ;\n")
    assert members(result.partitions[1]) == [(G2, "limited"), (G3, "limited")]


def test_long_names_never_match_by_name() -> None:
    long = "n" * 32
    result = parse(f"{long} : {G1} ;\n{long} : {G2} ;\n")
    assert [p.pkey for p in result.partitions] == [1, 2]


def test_unnamed_partition_is_named_after_its_pkey() -> None:
    result = parse(f"=0x0a12 : {G1} ;\nabcd=0 : {G2} ;\n0xabcd : {G3} ;\n")
    assert [(p.pkey, p.name) for p in result.partitions] == [
        (0x0A12, "0a12"),
        (1, "abcd"),
        (0x2BCD, "2bcd"),
    ]


# -- the line buffer (osm_prtn_config_parse_file, parse_part_conf) -------------


def test_hash_cuts_each_physical_line() -> None:
    part = only(f"a=0x10 : {G1}, # {G2},\n {G3} ;\n", 0x10)
    assert members(part) == [(G1, "limited"), (G3, "limited")]


def test_long_line_is_split_and_a_guid_across_the_cut_is_lost() -> None:
    head = f"a=0x10 : {G1}=full,"
    pad = " " * (FGETS_MAX - len(head) - 10)
    line = f"{head}{pad}{G2}=full, {G3} ;\n"
    assert line.index(G2) + 10 == FGETS_MAX  # "0x0002c903" | "00000201=full, ..."
    result = parse(line)
    assert members(result.partitions[0]) == [
        (G1, "full"),
        ("0x000000000002c903", "limited"),
        ("0x0000000000000081", "full"),
        (G3, "limited"),
    ]
    assert codes(result) == ["line_split", "octal_guid"]


def test_line_of_exactly_the_fgets_size_is_whole() -> None:
    line = f"a=0x10 : {G1}".ljust(FGETS_MAX - 2) + ";\n"
    assert len(line) == FGETS_MAX
    assert codes(parse(line)) == ["long_line"]
    assert codes(parse(line.replace(";\n", " ;\n"))) == ["line_split"]  # tail "\n" is harmless


def test_crlf_is_fatal_and_cr_in_comments_is_harmless() -> None:
    result = parse(f"# header\r\n{D}".replace("\n", "\r\n"))
    assert result.fatal is not None
    assert result.fatal.code == "no_partition_definition"
    assert codes(result) == ["carriage_return", "no_partition_definition"]
    assert parse(f"# a CRLF comment\r\n{D}").diagnostics == ()


def test_semicolon_first_on_a_line_reads_the_previous_line() -> None:
    stale = parse(f"a=0x10 :\n   {G1}=full, {G2}\n;\n")
    assert stale.fatal is not None
    assert (stale.fatal.code, stale.fatal.line) == (
        "no_partition_definition",
        3,
    )
    assert "stale_buffer_read" in codes(stale)
    benign = parse("a=0x10 :\nALL\n;\n")  # the leftover byte after ";\n" is a NUL
    assert benign.ok
    assert codes(benign) == ["stale_buffer_read"]
    undefined = parse(";\n")  # as the very first line, nothing was left there
    assert undefined.fatal is not None
    assert undefined.fatal.code == "no_partition_definition"


def test_double_semicolon_is_fatal() -> None:
    result = parse(f"a=0x10 : {G1} ;;\n")
    assert result.fatal is not None
    assert result.fatal.code == "no_partition_definition"


def test_empty_and_comment_only_files_are_fatal() -> None:
    for text in ("", "\n\n", "   \t\n", "# nothing\n\n# here\n"):
        result = parse(text)
        assert result.fatal is not None
        assert (result.fatal.code, result.fatal.line) == ("no_statements", 0)


def test_missing_final_semicolon_still_applies() -> None:
    result = parse(f"a=0x10 : {G1}=full")
    assert members(result.partitions[0]) == [(G1, "full")]
    assert codes(result) == ["missing_final_semicolon"]


def test_nul_byte_ends_the_line() -> None:
    result = parse(f"a=0x10 : {G1} ;\0 b=0x20 : {G2} ;\n".encode())
    assert [p.pkey for p in result.partitions] == [0x10]
    assert codes(result) == ["nul_byte"]


def test_empty_partition_is_reported() -> None:
    result = parse(f"{D}a=0x10 : NONE ;\n")
    assert codes(result) == ["empty_partition"]


# -- mgid entries (mgroup_create) -----------------------------------------------


def test_mgid_groups_inherit_flags_but_tclass() -> None:
    text = (
        "a=0x10, ipoib, mtu=5, rate=7, TClass=9, Q_Key=0x22 :\n"
        "  mgid=ff12:401b::5,\n"  # IP group: PKey bits filled in
        "  mgid=ff15::9, mtu=2, scope=8,\n"  # plain group, own flags
        f"  {G1} ;\n"
    )
    part = only(text, 0x10)
    assert part.broadcast == GroupFlags(5, 7, 0, 0, 0x22, 9, 0)
    assert [(g.mgid, g.flags) for g in part.mgroups] == [
        ("ff12:401b:8010::5", GroupFlags(5, 7, 0, 0, 0x22, 0, 0)),
        ("ff15::9", GroupFlags(2, 7, 0, 1 << 8, 0x22, 0, 0)),
    ]


def test_ip_mgroup_gets_the_ipoib_qkey_and_must_match_the_partition() -> None:
    text = (
        "a=0x10, ipoib :\n"
        "  mgid=ff12:401b::1,\n"
        "  mgid=ff12:401b:8010::2,\n"
        "  mgid=ff12:601b:8011::3,\n"
        "  mgid=ff12:401b::4, rate=6,\n"
        "  mgid=ff12:401b::5, mtu=5,\n"
        "  mgid=ff12:401b:ffff::ffff:ffff,\n"
        f"  {G1} ;\n"
    )
    result = parse(text)
    groups = result.partitions[0].mgroups
    assert [(g.mgid, g.flags.q_key) for g in groups] == [
        ("ff12:401b:8010::1", 0x0B1B),
        ("ff12:401b:8010::2", 0x0B1B),
    ]
    # the broadcast MGID template is accepted, but that group exists already
    assert codes(result) == ["ip_mgroup_rejected"] * 3 + ["duplicate_mgid"]


def test_bad_mgid_is_not_fatal_unless_the_segment_goes_on() -> None:
    result = parse(f"a=0x10 :\n  mgid=fe80::1,\n  mgid=not-a-gid,\n  {G1} ;\n")
    assert result.ok
    assert codes(result) == ["bad_mgid", "bad_mgid"]
    same_line = parse(f"a=0x10 : mgid=fe80::1, {G1} ;\n")
    assert same_line.fatal is not None
    assert same_line.fatal.code == "no_partition_definition"


def test_mgid_swallows_the_rest_of_its_segment() -> None:
    result = parse(f"{D}a=0x10 : mgid=ff12::1, {G1}=full, {G2} ;\n")
    assert result.partitions[1].entries == ()
    assert codes(result) == ["unknown_mgroup_flag"] * 2 + ["empty_partition"]


def test_mgid_without_comma_takes_the_comment_as_flags() -> None:
    result = parse(f"a=0x10 :\n  mgid=ff12::1 # rate=6\n  {G1} ;\n")
    assert result.partitions[0].mgroups[0].flags.rate == 6
    assert codes(result) == ["mgid_flags_overrun"]


def test_mgid_last_on_the_longest_line_reads_uninitialized_memory() -> None:
    result = parse(f"a=0x10 : {G1},\n  mgid=ff12::1234:5678:9abc:def0:1\n  , {G2} ;\n")
    assert result.ok
    assert codes(result) == ["mgid_flags_uninitialized"]
    fatal = parse(f"a=0x10 : {G1}, mgid=ff12::1 ;\n")  # and where the next statement is
    assert fatal.fatal is not None
    assert fatal.fatal.code == "undefined_buffer_read"


def test_mgid_without_value_crashes_opensm() -> None:
    result = parse(f"a=0x10 : {G1}, mgid ;\n")
    assert result.fatal is not None
    assert result.fatal.code == "mgid_without_value"


# -- C numbers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "end", "base"),
    [
        (b"0x1f", 0x1F, 4, 16),
        (b"0X1F", 0x1F, 4, 16),
        (b"017", 0o17, 3, 8),
        (b"0", 0, 1, 8),
        (b"08", 0, 1, 8),
        (b"0x", 0, 1, 8),
        (b"0xg", 0, 1, 8),
        (b"42abc", 42, 2, 10),
        (b" \t\r+7", 7, 5, 10),
        (b"-1", 2**64 - 1, 2, 10),
        (b"0x1ffffffffffffffff", 2**64 - 1, 19, 16),
        (b"-0x1ffffffffffffffff", 2**64 - 1, 20, 16),
        (b"abc", 0, 0, 10),
        (b"", 0, 0, 10),
        (b"-", 0, 0, 10),
    ],
)
def test_strtoul_base0(text: bytes, value: int, end: int, base: int) -> None:
    assert strtoul(text) == (value, end, base)


# -- the fast path and speed --------------------------------------------------------

_TOKENS = st.sampled_from(
    [
        "a=0x10", "b=0x20", "c", "0x30", ":", ";", ",", "=", " ", "\t", "\n", "#", "\r", "\0",
        "ipoib", "indx0", "mtu=5", "m=5", "sl=3", "defmember=full", "scope=3",
        G1, G2, "0X0002C90300000301", "0x0000000000000000", "017", "all", "ALL", "AL",
        "ALL_CAS", "SELF", "NONE", "full", "limited", "both", "f",
        "mgid=ff12::1", "mgid=ff12:401b::2", "mgid", "rate=6", "x" * 300,
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(_TOKENS, max_size=60), st.booleans())
def test_fast_path_equals_the_buffer_walk(tokens: list[str], allow_both: bool) -> None:
    data = "".join(tokens).encode()
    exact = _run(data, allow_both, False, fast=False)
    fast = parse(data, allow_both_pkeys=allow_both)
    assert fast == exact
    assert [e.seq for p in fast.partitions for e in p.entries] == [
        e.seq for p in exact.partitions for e in p.entries
    ]


_MEMBERS = st.sampled_from(
    [G1, G2, "0X0002C90300000301", "ALL", "SELF", "ALL_CAS", "NONE", "A", "017", "0x0"]
)
_SUFFIXES = st.sampled_from(["", "", "=full", "=limited", "=both", "= full ", "=f", "="])
_FLAGS = st.sampled_from(
    ["ipoib", "indx0", "mtu=5", "rate=7", "sl=2", "defmember=both", "scope=5", "m=4", "bogus"]
)


@st.composite
def _statements(draw: st.DrawFn) -> str:
    """Mostly plain statements, as pkeyd renders them, with the usual slips."""
    name = draw(st.sampled_from(["a", "b", "Default", "t_1", "x.y-z", "0x12", "1bad"]))
    pkey = draw(st.sampled_from(["", "=0x10", "=0x8020", "=017", "=70000", "=0"]))
    flags = "".join(", " + f for f in draw(st.lists(_FLAGS, max_size=3)))
    members = [m + draw(_SUFFIXES) for m in draw(st.lists(_MEMBERS, max_size=6))]
    if draw(st.integers(0, 9)) == 0:
        members.insert(0, "mgid=ff12:401b::1" + draw(st.sampled_from(["", ", rate=3"])))
    sep = draw(st.sampled_from([", ", ",\n  ", ","]))
    colon = draw(st.sampled_from([" : ", ":", " :\n  "]))
    end = draw(st.sampled_from([" ;\n", ";", "\n;\n", " ;;\n", "\n", " ; # c\n", " ;\r\n"]))
    return name + pkey + flags + colon + sep.join(members) + end


_NOISE = st.sampled_from(["\n", "# comment\n", ";\n", "\0", "x" * 4100 + "\n"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_statements(), _statements(), _NOISE), max_size=12), st.booleans())
def test_fast_path_equals_the_buffer_walk_on_plausible_files(
    parts: list[str], allow_both: bool
) -> None:
    data = "".join(parts).encode()
    assert parse(data, allow_both_pkeys=allow_both) == _run(data, allow_both, False, fast=False)


def test_rendered_files_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_walk(self: object, chunk: bytes) -> None:
        raise AssertionError(f"buffer walk for {chunk!r}")

    monkeypatch.setattr("pkeyd.opensm.parse._Reader._chunk", no_walk)
    text = (
        "# partitions.conf for OpenSM, written by pkeyd\n\n"
        "Default=0x7fff, ipoib : ALL=limited, SELF=full ;\n"
        f"tenant=0x0a12, ipoib, mtu=5, indx0, defmember=full : {G1}=full, {G2}=both, {G3} ;\n"
    )
    assert parse(text).ok


def test_parse_speed(capsys: pytest.CaptureFixture[str]) -> None:
    lines = []
    for pkey in range(1, 0x8000):
        count = 7 if pkey <= 200_000 - 6 * 32_767 else 6
        guids = (0x0002C90300000001 + 0x100 * ((pkey * 7 + j) % 5000) for j in range(count))
        entries = ", ".join(f"0x{g:016x}=full" for g in guids)
        lines.append(f"p{pkey}=0x{pkey:04x}, ipoib : {entries} ;\n")
    text = "".join(lines)
    began = time.perf_counter()
    result = parse(text)
    elapsed = time.perf_counter() - began
    assert result.ok
    assert len(result.partitions) == 32_767
    assert sum(len(p.entries) for p in result.partitions) == 200_000
    with capsys.disabled():
        print(f"\nparse: 32767 partitions, 200000 members, {len(text)} bytes in {elapsed:.3f}s")
