from django.apps import AppConfig


class AdspaceConfig(AppConfig):
    name = "adspace"
