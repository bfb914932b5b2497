from django.apps import AppConfig


class AdspaceConfig(AppConfig):
    name = "adspace"

    def ready(self):
        from accounts import apikeys, audit, locks, recovery, workers

        from . import api, buy, credit, notices, order_exec, review, webhooks
        from . import audit as adspace_audit

        # Every buy lock: a standing order's buy carries its order and finishes it too.
        locks.register_finisher("buy", order_exec.finish_buy_lock)
        locks.register_finisher("credit", credit.finish_credit_lock)
        locks.register_finisher("reject", review.finish_reject_lock)
        recovery.register_pass("campaigns", buy.recover_campaigns, sharded=True)
        # After the campaigns: executions whose sale a later buyer finished are resolved here.
        recovery.register_pass("orders", order_exec.recover_orders, sharded=True)
        audit.register_audit(adspace_audit.audit_adspace)
        # The API key tab lives in accounts, which must not import adspace.
        apikeys.set_campaign_lister(api.seller_campaigns)
        # Split by seller between worker nodes (run_workers --shard); the outboxes and the
        # slot-start scan run on the lead shard's node.
        workers.register_task("creditor", credit.run_creditor, sharded=True)
        workers.register_task("webhooks", webhooks.run_deliverer)
        # Split by seller like the campaigns' recovery: one node executes a campaign's book.
        workers.register_task("orders", order_exec.run_executor, sharded=True)
        workers.register_task(
            "slotnotices", notices.queue_slot_notices, every=notices.EVERY_SECONDS
        )

        from accounts import views as account_views

        from . import browse_views

        account_views.register_home_section(browse_views.home_context)

        from . import admin_pages

        admin_pages.register_admin()
