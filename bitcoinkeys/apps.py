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
        recovery.register_account_check("keypool", pool.StuckGetting.start)
        audit.register_audit(keys_audit.audit_keypool)

        from .deposits import ready_deposits

        ready_deposits()

        from .withdrawals import ready_withdrawals

        ready_withdrawals()

        from . import admin_pages

        admin_pages.register_admin()
