from pathlib import Path

from django.test.runner import DiscoverRunner

TESTS_DIR = Path(__file__).resolve().parent


class CouponTestRunner(DiscoverRunner):
    """Django's runner, where a label may name a package inside tests/.

    So `python manage.py test stress` runs tests/stress, as does the dotted
    `tests.stress`.
    """

    def load_tests_for_label(self, label, discover_kwargs):
        package = label.split(".")[0]
        if package and (TESTS_DIR / package).is_dir():
            label = f"tests.{label}"
        return super().load_tests_for_label(label, discover_kwargs)

    def teardown_databases(self, old_config, **kwargs):
        from coupons.coupon_states import coupon_states

        coupon_states.stop_listening()  # its connection would keep the test database from being dropped
        super().teardown_databases(old_config, **kwargs)
