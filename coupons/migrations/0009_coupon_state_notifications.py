"""Every change to a coupon row that can give a refused claim a chance is announced to the app processes.

coupons/coupon_states.py: each process refuses, from what it knows, claims
for sold-out coupons, closed windows and unknown names, and forgets a
coupon when PostgreSQL notifies it on the `coupon_states` channel. The
services notify too (coupon_changed), but a trigger makes the database
itself the source, whatever wrote the row (the service, an operator's
psql, a migration): a coupon created or deleted, its stock going up, its
window moved; the table truncated ("*": every process forgets everything). A claim's decrement fires nothing: the WHEN clause is checked
by PostgreSQL itself, without calling the function. The payload is
"<id>:<name>", as coupon_changed writes it, so PostgreSQL sends one of two
identical notifications of a transaction.
"""

from django.db import migrations

FUNCTION = """
CREATE FUNCTION coupons_coupon_state_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed coupons_coupon := COALESCE(NEW, OLD);
BEGIN
    PERFORM pg_notify('coupon_states', changed.id || ':' || changed.name);
    RETURN NULL;
END
$$;
CREATE TRIGGER coupons_coupon_created_or_deleted AFTER INSERT OR DELETE ON coupons_coupon
    FOR EACH ROW EXECUTE FUNCTION coupons_coupon_state_changed();
CREATE FUNCTION coupons_coupons_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('coupon_states', '*');
    RETURN NULL;
END
$$;
CREATE TRIGGER coupons_coupon_truncated AFTER TRUNCATE ON coupons_coupon
    FOR EACH STATEMENT EXECUTE FUNCTION coupons_coupons_truncated();
CREATE TRIGGER coupons_coupon_stock_up_or_window_moved AFTER UPDATE ON coupons_coupon
    FOR EACH ROW WHEN (
        NEW.remaining_amount > OLD.remaining_amount
        OR NEW.starts_at IS DISTINCT FROM OLD.starts_at
        OR NEW.ends_at IS DISTINCT FROM OLD.ends_at
        OR NEW.name <> OLD.name
    ) EXECUTE FUNCTION coupons_coupon_state_changed();
"""

DROP = """
DROP TRIGGER coupons_coupon_stock_up_or_window_moved ON coupons_coupon;
DROP TRIGGER coupons_coupon_created_or_deleted ON coupons_coupon;
DROP TRIGGER coupons_coupon_truncated ON coupons_coupon;
DROP FUNCTION coupons_coupon_state_changed();
DROP FUNCTION coupons_coupons_truncated();
"""


def on_postgresql(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("coupons", "0008_imported_codes")]

    operations = [migrations.RunPython(on_postgresql(FUNCTION), on_postgresql(DROP))]
