"""PostgreSQL's wake-up: a trigger on `runs` that announces every change a daemon
must see, on one NOTIFY channel.

The trigger fires after INSERT, DELETE and UPDATE OF status, once per
statement, so a client's new run, cancel or deletion wakes every listening
daemon the moment it commits, while the daemon's own progress writes (which
change no status) announce nothing. It is the one thing fusion-runner adds to
a client's schema; `ensure_notify_trigger` creates it when missing, and creating
it again is a no-op. The payload is only the operation: a daemon looks at the
table itself, so a notification lost or merged is never a wrong answer.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

CHANNEL = "fusion_runner_runs"
FUNCTION = "fusion_runner_notify_runs"
TRIGGER = "fusion_runner_runs_notify"
# pg_advisory_xact_lock key serialising daemons that create the trigger at once
# ("fusion_r" in ASCII: any constant of our own).
LOCK_KEY = 0x667573696F6E5F72

_FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', TG_OP);
    RETURN NULL;
END
$$
"""
_TRIGGER_SQL = f"""
CREATE TRIGGER {TRIGGER}
AFTER INSERT OR DELETE OR UPDATE OF status ON runs
FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()
"""
_TRIGGER_EXISTS = text(
    "SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
    "WHERE t.tgname = :name AND c.oid = to_regclass('runs')"
)


def ensure_notify_trigger(engine: Engine) -> None:
    """Create the function and the trigger on `runs` unless they exist.

    Under a transaction-scoped advisory lock: two daemons starting at once on a
    new database would otherwise both create them, and one would fail.
    """
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        if conn.execute(_TRIGGER_EXISTS, {"name": TRIGGER}).first() is not None:
            return
        conn.execute(text(_FUNCTION_SQL))
        conn.execute(text(_TRIGGER_SQL))
