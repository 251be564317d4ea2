from django.test import SimpleTestCase
from django.test.utils import iter_test_cases

from tests.runner import CouponTestRunner


class DjangoRunnerTests(SimpleTestCase):
    """`python manage.py test` runs every unittest-style test, and leaves the pytest-only browser and docs tests out."""

    def discover(self, label):
        return [test.id() for test in iter_test_cases(CouponTestRunner(verbosity=0).build_suite([label]))]

    def test_everything_but_the_browser_tests(self):
        found = self.discover("tests")

        self.assertIn("tests.test_admin.RestockTests.test_restock_puts_a_sold_out_coupon_back_on_sale", found)
        self.assertIn("tests.stress.test_http.HttpStressTests.test_flash_sale_fifty_users_race_for_five", found)
        self.assertEqual([test for test in found if test.startswith(("tests.browser", "tests.docs"))], [])

    def test_the_browser_and_docs_packages_hold_nothing_for_django(self):
        self.assertEqual(self.discover("browser"), [])
        self.assertEqual(self.discover("docs"), [])
