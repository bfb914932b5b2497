from django.apps import AppConfig


class BitcoinkeysConfig(AppConfig):
    name = "bitcoinkeys"
