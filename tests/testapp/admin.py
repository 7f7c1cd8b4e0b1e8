from django.contrib import admin

from tests.testapp.models import Item, Look
from visual_reco.admin import VisualRecoAdmin, VisualRecoAdminMixin


@admin.register(Item)
class ItemAdmin(VisualRecoAdmin, admin.ModelAdmin):  # the old name still works
    list_display = ["name", "category"]


@admin.register(Look)
class LookAdmin(VisualRecoAdminMixin, admin.ModelAdmin):
    list_display = ["name"]
