from django.contrib import admin

from tests.testapp.models import Garment, GarmentPhoto, Item, Look
from visual_reco.admin import VisualRecoAdmin, VisualRecoAdminMixin, VisualRecoInlineMixin


@admin.register(Item)
class ItemAdmin(VisualRecoAdmin, admin.ModelAdmin):  # the old name still works
    list_display = ["name", "category"]


@admin.register(Look)
class LookAdmin(VisualRecoAdminMixin, admin.ModelAdmin):
    list_display = ["name"]


class GarmentPhotoInline(VisualRecoInlineMixin, admin.TabularInline):
    model = GarmentPhoto
    extra = 0
    fields = ["image"]  # the status is shown all the same


@admin.register(Garment)
class GarmentAdmin(VisualRecoAdminMixin, admin.ModelAdmin):
    list_display = ["name"]
    inlines = [GarmentPhotoInline]
