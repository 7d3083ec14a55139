"""The core's database (clasp_gateway/storage/): plugins' migrations as Alembic
branches on SQLite and PostgreSQL, ``gateway.database``, the ``storage:`` section."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from clasp_gateway import ConfigError, Database, MigrationError, RegistrationError, StorageSettings, hookimpl
from clasp_gateway.registrations import MigrationRegistration
from clasp_gateway.storage.migrations import version_table
from clasp_gateway.storage.settings import async_url, storage_problems
from clasp_gateway.testing import GatewayServer, config_from, load_module

TOYS = Path(__file__).parent / "storage_toys"
toy_notes = load_module(TOYS / "toy_notes" / "__init__.py", "toy_notes")
toy_tally = load_module(TOYS / "toy_tally" / "__init__.py", "toy_tally")


def settings(url: str, **extra: Any) -> StorageSettings:
    parsed, problems = storage_problems({"url": url, **extra})
    assert problems == []
    return parsed


def registration(module: Any, name: str) -> MigrationRegistration:
    return MigrationRegistration(name, Path(module.__file__).parent / "migrations", plugin=module.__name__)


async def tables(db: Database) -> set[str]:
    async with db.connect() as conn:
        return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))


# --- the storage: section ---------------------------------------------------------------------


def test_urls_get_their_async_driver() -> None:
    assert async_url("postgresql://u:p@db/x") == "postgresql+asyncpg://u:p@db/x"
    assert async_url("postgres://db/x") == "postgresql+asyncpg://db/x"
    assert async_url("sqlite:////var/lib/clasp.db") == "sqlite+aiosqlite:////var/lib/clasp.db"
    assert async_url("/var/lib/clasp.db") == "sqlite+aiosqlite:////var/lib/clasp.db"
    assert async_url("mysql://u:p@db/x") is None
    assert async_url("sqlite://relative.db") is None


def test_default_is_a_sqlite_file_in_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLASP_DATA_DIR", str(tmp_path))
    parsed, problems = storage_problems(None)
    assert problems == [] and parsed.dialect == "sqlite"
    assert parsed.url == f"sqlite+aiosqlite:///{tmp_path}/clasp.db"
    assert parsed.auto_migrate and parsed.pool_size == 5 and parsed.pool_timeout == 10.0


def test_mistakes_are_listed_with_did_you_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_DB_URL", raising=False)
    _, problems = storage_problems({"ulr": "x", "pool_size": 0, "pool_timeout": "forever", "auto_migrate": "yes"})
    assert "storage.ulr: unknown key; did you mean 'url'?" in problems
    assert any(p.startswith("storage.pool_size: expected an integer between 1 and 100") for p in problems)
    assert any(p.startswith("storage.pool_timeout: expected a duration") for p in problems)
    assert any(p.startswith("storage.auto_migrate: expected true or false") for p in problems)
    _, problems = storage_problems({"url": "${NO_SUCH_DB_URL}"})
    assert problems == ["storage.url: ${NO_SUCH_DB_URL} is not set: set NO_SUCH_DB_URL, or remove storage.url to "
                        "use the embedded SQLite file"]
    _, problems = storage_problems({"url": "mysql://root:Hunter2Secret@db/x"})
    assert problems == ["storage.url: expected postgresql://user:password@host/database, sqlite:////absolute/path.db "
                        "or a file path, got mysql://root:***@db/x"]


def test_a_bad_section_stops_the_gateway_before_it_serves() -> None:
    with pytest.raises(ConfigError, match=r"storage\.max_overflow: expected an integer between 0 and 100"):
        GatewayServer(config_from({"models": {}, "storage": {"max_overflow": -1}}))
    with pytest.raises(ConfigError, match=r"storage\.urll: unknown key; did you mean .url.\?"):
        GatewayServer(config_from({"models": {}, "storage": {"urll": "x"}}))


# --- migrations, on both dialects ---------------------------------------------------------------


async def test_a_plugin_branch_upgrades_to_its_head(database_url: str) -> None:
    db = Database(settings(database_url), [registration(toy_notes, "notes")])
    try:
        assert await db.current() == {"notes": None}
        assert await db.upgrade() == {"notes": "n002tags"}
        assert {"toy_notes", version_table("notes")} <= await tables(db)
        async with db.begin() as conn:
            await conn.execute(sa.insert(toy_notes.NOTES), [
                {"body": "hello", "tags": {"project": "api"}, "ts": 1.5},
                {"body": "again", "tags": {}, "ts": 2.5},
            ])
        async with db.connect() as conn:
            rows = (await conn.execute(sa.select(toy_notes.NOTES.c.body, toy_notes.NOTES.c.tags)
                                       .order_by(toy_notes.NOTES.c.ts))).all()
        assert [(r.body, r.tags) for r in rows] == [("hello", {"project": "api"}), ("again", {})]
        # Running it again changes nothing (and loses nothing).
        assert await db.upgrade() == {"notes": "n002tags"}
        async with db.connect() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(toy_notes.NOTES))).scalar() == 2
        # A transaction that raises is rolled back.
        with pytest.raises(RuntimeError):
            async with db.begin() as conn:
                await conn.execute(sa.delete(toy_notes.NOTES))
                raise RuntimeError("abort")
        async with db.connect() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(toy_notes.NOTES))).scalar() == 2
    finally:
        await db.dispose()


async def test_two_plugins_two_branches(database_url: str) -> None:
    notes, tally = registration(toy_notes, "notes"), registration(toy_tally, "tally")
    db = Database(settings(database_url), [notes, tally])
    try:
        # ``notes`` is already at its head in this module's database; ``tally`` is new.
        assert await db.upgrade() == {"notes": "n002tags", "tally": "t001tally"}
        async with db.begin() as conn:
            await conn.execute(sa.insert(toy_tally.TALLY).values(name="a", count=1))
        async with db.connect() as conn:
            versions = [(await conn.execute(sa.text(f"SELECT version_num FROM {version_table(name)}"))).scalar()
                        for name in ("notes", "tally")]
        assert versions == ["n002tags", "t001tally"]  # one table per branch
    finally:
        await db.dispose()
    # Without the tally plugin (turned off, or uninstalled) its branch is left alone: the
    # gateway still starts and upgrades the others.
    alone = Database(settings(database_url), [notes])
    try:
        assert await alone.current() == {"notes": "n002tags"}
        assert await alone.upgrade() == {"notes": "n002tags"}
    finally:
        await alone.dispose()
    both = Database(settings(database_url), [notes, tally])
    try:
        assert await both.current() == {"notes": "n002tags", "tally": "t001tally"}
    finally:
        await both.dispose()


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(sqlite_url: str) -> None:
    db = Database(settings(sqlite_url, busy_timeout="2s"))
    try:
        async with db.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 2000
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
        assert db.dialect == "sqlite" and db.engine.pool.size() == 5  # type: ignore[attr-defined]
    finally:
        await db.dispose()


# --- the gateway ------------------------------------------------------------------------------------


class AsksForADatabase:
    """A plugin without migrations that uses the database (``gateway.database``)."""

    database: Any = None

    @hookimpl
    async def startup(self, app: Any, config: Any) -> None:
        self.database = app.state.gateway.database


def test_the_gateway_opens_migrates_and_closes_its_database(sqlite_url: str) -> None:
    config = config_from({"models": {}, "storage": {"url": sqlite_url}})
    server = GatewayServer(config, plugins=[toy_notes, toy_tally]).start()
    try:
        db: Database = server.gateway.database
        assert server.gateway.has_database and db.dialect == "sqlite"
        # (installed plugins' branches, e.g. clasp-budgets' ``ledger``, come too)
        assert {"notes", "tally"} <= {r.name for r in server.gateway.migrations}
        assert db._engine is not None  # opened (and migrated) by Gateway.start
    finally:
        server.stop()
    assert db._engine is None  # disposed of by Gateway.close


def test_no_plugin_no_database_and_no_sqlalchemy() -> None:
    code = (
        "import sys\n"
        "from clasp_gateway.testing import config_from\n"
        "from clasp_gateway.shell.app import create_app\n"
        "app = create_app(config_from({'models': {}}), load_plugins=False)\n"
        "assert not app.starlette_app.state.gateway.has_database\n"
        "print('sqlalchemy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"


def test_a_plugin_may_ask_for_a_database_without_migrations(tmp_path: Path) -> None:
    plugin = AsksForADatabase()
    # A database of its own: the module's has the toys' branches, which this gateway
    # does not load, while an installed plugin (clasp-budgets' ledger) may migrate.
    url = f"sqlite:///{tmp_path / 'own.db'}"
    with GatewayServer(config_from({"models": {}, "storage": {"url": url}}), plugins=[plugin]) as server:
        assert server.gateway.has_database and plugin.database is server.gateway.database
        assert not {"notes", "tally"} & {m.name for m in plugin.database.migrations}


# --- registrations -----------------------------------------------------------------------------


def _plugin_registering(*args: Any) -> Any:
    class Plugin:
        @hookimpl
        def register_migrations(self, register: Any) -> None:
            register(*args)

    return Plugin()


@pytest.mark.parametrize("args, message", [
    (("Ledger Spend", Path(__file__).parent), "migration branch 'Ledger Spend' must be a lower-case word"),
    (("ledger", Path("/no/such/dir")), "the directory of migration branch 'ledger' does not exist"),
    (("ledger",), "the directory of migration branch 'ledger' must be a path, got NoneType"),
])
def test_bad_registrations_name_the_plugin(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(RegistrationError, match="register_migrations: " + message):
        GatewayServer(config_from({"models": {}}), plugins=[_plugin_registering(*args)])


def test_two_plugins_may_not_share_a_branch() -> None:
    again = _plugin_registering("notes", TOYS / "toy_tally" / "migrations")
    with pytest.raises(RegistrationError, match="both register the migration branch 'notes'"):
        GatewayServer(config_from({"models": {}}), plugins=[toy_notes, again])


async def test_a_branch_without_its_label_is_refused(tmp_path: Path, sqlite_url: str) -> None:
    (tmp_path / "x001.py").write_text(
        'revision = "x001"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n'
        "def upgrade():\n    pass\n")
    db = Database(settings(sqlite_url), [MigrationRegistration("extra", tmp_path, plugin="acme")])
    with pytest.raises(MigrationError, match=r"plugin 'acme': register_migrations: 'extra': the first revision x001 "
                                             r"\(x001.py\) needs branch_labels = \('extra',\)"):
        await db.upgrade()


def test_a_revision_id_two_plugins_share_is_refused(tmp_path: Path) -> None:
    (tmp_path / "copy.py").write_text((TOYS / "toy_tally" / "migrations" / "t001_create_tally.py").read_text()
                                      .replace('("tally",)', '("copy",)'))
    copy = _plugin_registering("copy", tmp_path)
    with pytest.raises(MigrationError, match="revision id 't001tally' is used by"):
        GatewayServer(config_from({"models": {}}), plugins=[toy_tally, copy])


def test_without_auto_migrate_the_gateway_says_the_database_is_behind(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = "sqlite:///" + str(tmp_path / "behind.db")
    config = config_from({"models": {}, "storage": {"url": url, "auto_migrate": False}})
    with GatewayServer(config, plugins=[toy_notes]):
        pass
    assert "is behind its plugins: notes at nothing (latest n002tags); run `clasp db upgrade`" in caplog.text
