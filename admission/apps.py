from django.apps import AppConfig


class AdmissionConfig(AppConfig):
    name = "admission"
    verbose_name = "Fair admission (waiting room and draw)"

    def ready(self):
        # coupons never imports admission: admission registers itself (coupons/extensions.py).
        from admission.extension import AdmissionExtension
        from coupons import extensions

        extensions.register(AdmissionExtension())
        from admission.metrics import AdmissionCollector
        from coupons.stock_metrics import stock_registry

        stock_registry.register(AdmissionCollector())
