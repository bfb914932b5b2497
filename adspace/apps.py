from django.apps import AppConfig


class AdspaceConfig(AppConfig):
    name = "adspace"

    def ready(self):
        from accounts import apikeys, audit, locks, recovery, workers

        from . import api, buy, credit, notices, review, webhooks
        from . import audit as adspace_audit

        locks.register_finisher("buy", buy.finish_buy_lock)
        locks.register_finisher("credit", credit.finish_credit_lock)
        locks.register_finisher("reject", review.finish_reject_lock)
        recovery.register_pass("campaigns", buy.recover_campaigns)
        audit.register_audit(adspace_audit.audit_adspace)
        # The API key tab lives in accounts, which must not import adspace.
        apikeys.set_campaign_lister(api.seller_campaigns)
        workers.register_task("creditor", credit.run_creditor)
        workers.register_task("webhooks", webhooks.run_deliverer)
        workers.register_task(
            "slotnotices", notices.queue_slot_notices, every=notices.EVERY_SECONDS
        )

        from accounts import views as account_views

        from . import browse_views

        account_views.register_home_section(browse_views.home_context)

        from . import admin_pages

        admin_pages.register_admin()
