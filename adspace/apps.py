from django.apps import AppConfig


class AdspaceConfig(AppConfig):
    name = "adspace"

    def ready(self):
        from accounts import audit, locks, recovery

        from . import audit as adspace_audit
        from . import buy

        locks.register_finisher("buy", buy.finish_buy_lock)
        recovery.register_pass("campaigns", buy.recover_campaigns)
        audit.register_audit(adspace_audit.audit_adspace)
