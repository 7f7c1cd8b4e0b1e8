from django.contrib import admin

from tests.testapp.models import Item
from visual_reco.admin import VisualRecoAdmin


@admin.register(Item)
class ItemAdmin(VisualRecoAdmin, admin.ModelAdmin):
    list_display = ["name", "category"]
