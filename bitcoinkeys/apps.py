from django.apps import AppConfig


class BitcoinkeysConfig(AppConfig):
    name = "bitcoinkeys"

    def ready(self):
        from accounts import audit, recovery, workers

        from . import audit as keys_audit
        from . import (
            faucet,  # noqa: F401 - registers its system check
            pool,
        )

        # Sets and the huge-list pointer must exist; key pages come from import_keys.
        workers.register_init(pool.init_key_sets)
        # Sets stuck `filling` and accounts stuck `getting` are rolled forward by recovery: the
        # fills when its pass starts, the accounts in its one account walk (after the lock check,
        # which accounts registers first).
        recovery.register_account_check("keypool", pool.StuckGetting.start, sharded_start=True)
        audit.register_audit(keys_audit.audit_keypool)

        from .deposits import ready_deposits

        ready_deposits()

        from .withdraw_audit import ready_withdrawals

        ready_withdrawals()

        from accounts.heartbeat import register_health_detail

        from .node_alerts import payouts_health

        # A short payout wallet is a detail, not a 503: the site and its workers are healthy, and
        # the requests wait safely in the queue.
        register_health_detail("payouts", payouts_health)

        from accounts import leases

        from .payout_lease import lease_for_health

        # One processor at a time under its own lease document (process_withdrawals).
        leases.register_external("withdrawals", lease_for_health)

        from . import admin_pages

        admin_pages.register_admin()
