from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self):
        from . import adjust, audit, locks, recovery, workers

        locks.register_finisher("adjust", adjust.finish_adjust)
        recovery.register_pass("locks", recovery.recover_locks)
        audit.register_audit(audit.audit_accounts)
        workers.register_task("recovery", recovery.run_recovery)
        workers.register_init(workers.init_schema)
