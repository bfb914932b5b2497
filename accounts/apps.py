from django.apps import AppConfig
from django.conf import settings


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self):
        from . import adjust, audit, locks, notify, recovery, workers

        locks.register_finisher("adjust", adjust.finish_adjust)
        recovery.register_account_check("locks", recovery.ExpiredLocks)
        audit.register_audit(audit.audit_accounts)
        # Recovery is only needed after a crash (requests also finish expired locks they meet):
        # on its own cadence, and on a worker's first pass.
        workers.register_task(
            "recovery",
            recovery.run_recovery,
            every=lambda: settings.RECOVERY_INTERVAL_SECONDS,
            sharded=True,
        )
        workers.register_init(workers.init_schema)
        # The email outbox: sends what the money flows and the review queued (never on a request).
        workers.register_task("notices", notify.run_sender)

        # An SQLite ORM database (users' password hashes, sessions) is the owner's alone.
        database = settings.DATABASES["default"]
        name = str(database.get("NAME", ""))
        on_disk = name and not name.startswith((":memory:", "file:"))
        if database["ENGINE"].endswith("sqlite3") and on_disk:
            from docstore.files import private_sqlite_file

            private_sqlite_file(name)

        from django.db.models.signals import post_delete, post_save, pre_delete, pre_save

        from .auth_backends import forget_user, forget_user_before
        from .models import User

        # Signed-in users are cached (auth_backends): any change to one drops its entry, before
        # the write (refused if the cache cannot be reached) and after it.
        pre_save.connect(forget_user_before, sender=User, dispatch_uid="accounts.forget.pre_save")
        pre_delete.connect(
            forget_user_before, sender=User, dispatch_uid="accounts.forget.pre_delete"
        )
        post_save.connect(forget_user, sender=User, dispatch_uid="accounts.forget_user.save")
        post_delete.connect(forget_user, sender=User, dispatch_uid="accounts.forget_user.delete")
