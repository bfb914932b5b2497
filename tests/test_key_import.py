"""`manage.py import_keys`: validation first, any count (the last range short), repeats skipped,
non-zero exit when nothing is imported, crash-safe."""

from __future__ import annotations

import sys
import tracemalloc
import types
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from embit import bip32, bip39

from bitcoinkeys import gateway as g
from bitcoinkeys import importer, pool
from bitcoinkeys.addresses import derive_addresses
from docstore import NotFound
from docstore.backends.memory import MemoryStore
from docstore.faults import HookedStore
from tests.harness import CountingHook, Scenario, World, run_crash_points
from tests.test_key_pool import PAGE, PER_LIST_PAGE, VPUB, addresses, tiny_settings


def run(*args, **options) -> str:
    out = StringIO()
    call_command("import_keys", *args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def write_lines(tmp_path, lines, name="keys.txt"):
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def list_pages(store) -> list[list[list[str]]]:
    """Every huge-list page that exists, as lists of ranges of addresses."""
    out = []
    for z in range(store.get(g.KEYLIST_COUNT).value + 1):
        try:
            out.append([r["addresses"] for r in store.get(g.keylist_key(z)).value["ranges"]])
        except NotFound:
            out.append(None)
    return out


@pytest.fixture(autouse=True)
def tiny(settings, store, clock):
    tiny_settings(settings)
    pool.init_key_sets(store, clock)


@pytest.fixture
def watched(monkeypatch):
    """A fake chain module recording what import_keys asks it to watch."""
    calls: list[list[str]] = []

    class Backend:
        def import_addresses(self, addresses):
            calls.append(list(addresses))
            return len(addresses)

    fake = types.ModuleType("bitcoinkeys.chain")
    fake.get_chain = Backend
    monkeypatch.setitem(sys.modules, "bitcoinkeys.chain", fake)
    return calls


# --- files ------------------------------------------------------------------------------------


def test_a_file_becomes_huge_list_pages_of_whole_ranges(tmp_path, store, watched):
    keys = addresses(0, 2 * PER_LIST_PAGE)
    out = run(write_lines(tmp_path, ["# deposit keys", "", *keys, "   "]))

    assert list_pages(store) == [
        [list(keys[0:3]), list(keys[3:6])],
        [list(keys[6:9]), list(keys[9:12])],
    ]
    assert store.get(g.keylist_key(0)).value["ranges"][0]["claimUuid"] is None
    assert store.get(g.imported_key(keys[7])).value["page"] == 1
    assert watched == [list(keys[0:6]), list(keys[6:12])]
    assert "12 addresses, all valid for regtest" in out
    assert "huge-list page 0: 6 addresses in 2 ranges (lines 3-8)" in out
    assert "Imported 12 addresses into huge-list pages 0-1." in out


def test_a_count_of_no_whole_ranges_is_all_imported_its_last_range_short(tmp_path, store):
    keys = addresses(0, PER_LIST_PAGE + PAGE + 2)
    out = run(write_lines(tmp_path, keys))

    assert list_pages(store) == [
        [list(keys[0:3]), list(keys[3:6])],
        [list(keys[6:9]), list(keys[9:11])],
    ]
    assert "Imported 11 addresses into huge-list pages 0-1." in out
    assert "NOT imported" not in out
    for address in keys[-2:]:
        assert store.get(g.imported_key(address)).value["page"] == 1


def test_twelve_addresses_at_the_production_shape_are_imported_and_all_dealt(
    tmp_path, store, clock, settings
):
    from accounts.gateway import ensure_account
    from tests.invariants import assert_audit_clean

    settings.KEYPOOL_PAGE_SIZE, settings.KEYPOOL_RANGES_PER_LIST_PAGE = 100, 100
    settings.KEYPOOL_SETS = 1  # one set, so every deal meets the one short range
    keys = addresses(0, 12)
    assert "Imported 12 addresses into huge-list page 0." in run(write_lines(tmp_path, keys))
    dealt = []
    for i in range(12):
        ensure_account(store, clock, f"user{i}")
        dealt.append(pool.get_deposit_address(store, clock, f"user{i}"))
    assert sorted(dealt) == sorted(keys)
    ensure_account(store, clock, "late")
    with pytest.raises(pool.OutOfKeys):
        pool.get_deposit_address(store, clock, "late")
    assert pool.pool_levels(store)["freeAddressesOnList"] == 0
    assert_audit_clean(store)


def test_an_import_that_imports_nothing_exits_non_zero(tmp_path, store):
    import subprocess
    import sys as system

    path = write_lines(tmp_path, addresses(0, 4))
    run(path)
    with pytest.raises(CommandError, match="Nothing was imported"):
        run(path)
    with pytest.raises(CommandError, match="nothing new would be imported"):
        run(path, dry_run=True)
    # And as a process: what a refill script sees.
    env = {
        **__import__("os").environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.dev",
        "DOCSTORE_PATH": str(tmp_path / "process-store.sqlite3"),  # not the test's own store
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CACHE_URL": f"filecache://{tmp_path / 'cache'}",
    }
    command = [system.executable, "manage.py", "import_keys", path]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0
    assert "Nothing was imported" in again.stderr


def test_one_bad_line_refuses_the_whole_file_and_names_it(tmp_path, store):
    keys = list(addresses(0, PER_LIST_PAGE))
    keys[2] = keys[2][:-1]  # truncated
    keys.insert(4, "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu")  # mainnet
    with pytest.raises(CommandError) as exc:
        run(write_lines(tmp_path, keys))
    message = str(exc.value)
    assert "2 of 7 addresses are not valid regtest addresses; nothing was imported" in message
    assert "line 3:" in message and "bad checksum" in message
    assert "line 5:" in message and "this is a mainnet address; this site uses regtest" in message
    with pytest.raises(NotFound):
        store.get(g.KEYLIST_COUNT)
    with pytest.raises(NotFound):
        store.get(g.imported_key(keys[0]))


def test_the_list_of_bad_lines_is_capped(tmp_path):
    with pytest.raises(CommandError) as exc:
        run(write_lines(tmp_path, [f"nope{i}" for i in range(30)]))
    message = str(exc.value)
    assert "30 of 30" in message and "line 20:" in message and "line 21:" not in message
    assert "... and 10 more" in message


def test_repeats_in_the_input_are_reported_and_skipped(tmp_path, store):
    keys = addresses(0, PER_LIST_PAGE)
    lines = [keys[0], keys[1], keys[0].upper(), *keys[2:], keys[5]]
    out = run(write_lines(tmp_path, lines))
    assert "line 3: " + keys[0] + " repeats an earlier line; skipped" in out
    assert "line 8: " + keys[5] + " repeats an earlier line; skipped" in out
    assert "skipped 2 repeated in the input" in out
    assert list_pages(store) == [[list(keys[0:3]), list(keys[3:6])]]


def test_running_the_same_import_again_imports_nothing_and_writes_nothing(tmp_path, store):
    path = write_lines(tmp_path, addresses(0, PER_LIST_PAGE))
    run(path)
    hook = CountingHook()
    items = importer.read_address_lines(path)
    result = importer.import_addresses(HookedStore(store, hook), None, items, "regtest")
    assert result.imported == 0 and result.already == PER_LIST_PAGE
    assert hook.writes == []
    out = StringIO()
    with pytest.raises(CommandError, match="Nothing was imported"):
        call_command("import_keys", path, stdout=out, stderr=StringIO())
    assert "was already imported (huge-list page 0); skipped" in out.getvalue()


def test_a_second_file_overlapping_the_first_adds_only_the_new_addresses(tmp_path, store):
    run(write_lines(tmp_path, addresses(0, PER_LIST_PAGE), "a.txt"))
    out = run(write_lines(tmp_path, addresses(3, 3 + PER_LIST_PAGE), "b.txt"))
    assert "skipped 3 already imported" in out
    assert list_pages(store)[1] == [list(addresses(6, 9))]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty: no addresses to import"),
        ("# only\n\n   \n# comments\n", "has only blank lines and comments"),
    ],
)
def test_an_empty_file_is_refused(tmp_path, content, message):
    path = tmp_path / "keys.txt"
    path.write_text(content)
    with pytest.raises(CommandError, match=message):
        run(str(path))


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        run(str(tmp_path / "nope.txt"))


def test_no_source_or_two_sources_are_refused(tmp_path):
    with pytest.raises(CommandError, match="Give a FILE"):
        run()
    with pytest.raises(CommandError, match="not both"):
        run(str(tmp_path / "x"), xpub=VPUB, start=0, end=6)


def test_a_huge_line_is_reported_without_reading_it_into_memory(tmp_path):
    path = tmp_path / "keys.txt"
    with open(path, "w") as f:
        f.write(addresses(0, 1)[0] + "\n")
        f.write("x" * 5_000_000)  # one line, no newline
        f.write("\n" + addresses(1, 2)[0] + "\n")
    tracemalloc.start()
    try:
        lines = list(importer.read_address_lines(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"reading kept {peak} bytes"
    assert [n for n, _ in lines] == [1, 2, 3]
    assert len(lines[1][1]) == importer.MAX_LINE + 1
    with pytest.raises(CommandError, match=r"line 2: .*too long"):
        run(str(path))


def test_quiet_runs_print_nothing(tmp_path, store):
    assert run(write_lines(tmp_path, addresses(0, PER_LIST_PAGE)), verbosity=0) == ""
    assert run(write_lines(tmp_path, addresses(20, 24), "b.txt"), verbosity=0) == ""
    assert store.get(g.imported_key(addresses(23, 24)[0])).value["page"] == 1


def test_a_dry_run_counts_and_writes_nothing(tmp_path, store):
    path = write_lines(tmp_path, addresses(0, PER_LIST_PAGE + 4))
    out = run(path, dry_run=True)
    assert "would import 10 addresses into 2 huge-list pages" in out
    with pytest.raises(NotFound):
        store.get(g.KEYLIST_COUNT)


# --- extended public keys ---------------------------------------------------------------------


def test_an_xpub_range_is_derived_and_imported(store, watched):
    out = run(xpub=VPUB, start=0, end=PER_LIST_PAGE + 1)
    assert list_pages(store) == [
        [list(addresses(0, 3)), list(addresses(3, 6))],
        [list(addresses(6, 7))],
    ]
    assert "deriving 7 addresses, m/0/0 to m/0/6" in out
    assert "Imported 7 addresses into huge-list pages 0-1." in out


def test_an_xpub_of_another_network_is_refused(store):
    zpub = (
        "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDK"
        "f31mGDtKsAYz2oz2AGutZYs"
    )
    with pytest.raises(
        CommandError, match="this is a mainnet key \\(zpub\\); this site uses regtest"
    ):
        run(xpub=zpub, start=0, end=6)


def test_an_xpub_import_needs_a_range(store):
    with pytest.raises(CommandError, match="--from I and --to J"):
        run(xpub=VPUB, start=0)
    with pytest.raises(CommandError, match="must be above"):
        run(xpub=VPUB, start=6, end=6)


def test_taproot_addresses_from_an_xpub(store):
    root = bip32.HDKey.from_seed(bip39.mnemonic_to_seed("abandon " * 11 + "about"))
    tpub = root.derive("m/86h/1h/0h").to_public().to_base58(version=bytes.fromhex("043587cf"))
    assert tpub.startswith("tpub")
    run(xpub=tpub, start=0, end=PER_LIST_PAGE, kind="p2tr")
    first = list_pages(store)[0][0][0]
    assert first == derive_addresses(tpub, 0, 1, "p2tr", network="regtest")[0]
    assert first.startswith("bcrt1p")


# --- crashes, leases, the chain ---------------------------------------------------------------


def test_markers_left_by_a_dead_import_are_imported_again_and_its_page_number_stays_a_hole(
    tmp_path, store, clock
):
    keys = addresses(0, PER_LIST_PAGE)
    dead = store.counter(g.KEYLIST_COUNT)
    for address in keys[:4]:
        store.insert(g.imported_key(address), {"page": dead, "run": "dead", "at": 0})
    store.insert(g.IMPORT_LEASE, {"run": "dead", "since": clock.now()})
    with pytest.raises(CommandError, match="Another import_keys is running"):
        run(write_lines(tmp_path, keys))

    clock.advance(importer.IMPORT_LEASE_SECONDS)
    out = run(write_lines(tmp_path, keys))
    assert "Imported 6 addresses into huge-list page 1." in out
    assert list_pages(store) == [None, [list(keys[0:3]), list(keys[3:6])]]
    assert store.get(g.imported_key(keys[0])).value["page"] == 1
    with pytest.raises(NotFound):
        store.get(g.IMPORT_LEASE)  # released


def test_addresses_are_watched_before_their_page_can_be_dealt(tmp_path, store, monkeypatch):
    seen = []

    def watch(addresses):
        with pytest.raises(NotFound):
            store.get(g.keylist_key(0))
        assert all(store.get(g.imported_key(a)).value["page"] == 0 for a in addresses)
        seen.append(addresses)

    monkeypatch.setattr(importer, "_watch", watch)
    run(write_lines(tmp_path, addresses(0, PER_LIST_PAGE)))
    assert len(seen) == 1


def test_a_failing_chain_stops_the_import_before_the_page(tmp_path, store, monkeypatch):
    def down(addresses):
        raise importer.KeyImportError("bitcoind is not reachable")

    monkeypatch.setattr(importer, "_watch", down)
    with pytest.raises(CommandError, match="bitcoind is not reachable"):
        run(write_lines(tmp_path, addresses(0, PER_LIST_PAGE)))
    with pytest.raises(NotFound):
        store.get(g.keylist_key(0))
    monkeypatch.undo()
    out = run(write_lines(tmp_path, addresses(0, PER_LIST_PAGE)))
    assert "Imported 6 addresses into huge-list page 1." in out


def test_watch_is_a_no_op_without_a_chain_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitcoinkeys.chain", types.ModuleType("bitcoinkeys.chain"))
    importer._watch(["x"])  # no get_chain: nothing to do


# --- the import under every crash point -------------------------------------------------------

# Pages of 2 ranges of 2 addresses here: one whole page, then a last page of a whole range and a
# short one.
CRASH_PAGE = 2
CRASH_KEYS = addresses(100, 107)


def crash_setup(store, clock):
    pool.init_key_sets(store, clock)
    return {}


def crash_import(store, clock, ctx):
    return importer.import_addresses(store, clock, enumerate(CRASH_KEYS, 1), "regtest")


def crash_recover(store, clock):
    # The operator runs the same import again once the dead one's lease has run out.
    clock.advance(importer.IMPORT_LEASE_SECONDS)
    return importer.import_addresses(store, clock, enumerate(CRASH_KEYS, 1), "regtest")


def crash_check(world: World) -> None:
    store = world.store
    pages = [p for p in list_pages(store) if p is not None]
    flat = [a for page in pages for r in page for a in r]
    assert sorted(flat) == sorted(CRASH_KEYS), "every address imported exactly once"
    assert all(1 <= len(r) <= CRASH_PAGE for page in pages for r in page)
    for z, page in enumerate(list_pages(store)):
        for r in page or []:
            for address in r:
                assert store.get(g.imported_key(address)).value["page"] == z


def test_an_import_survives_every_crash_point_at_two_levels(settings):
    settings.KEYPOOL_PAGE_SIZE = CRASH_PAGE
    scenario = Scenario(
        "import", crash_setup, crash_import, crash_recover, crash_check,
        expected=(importer.KeyImportError,),
    )  # fmt: skip
    assert run_crash_points(scenario, MemoryStore) > 100
