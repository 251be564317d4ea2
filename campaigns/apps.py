from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Campaigns"

    def ready(self):
        # Campaigns add their rules to coupons through coupons' extension
        # registry: coupons never imports this app.
        from campaigns.extension import CampaignExtension
        from coupons import extensions

        extensions.register(CampaignExtension())
