"""Admin of the demo shop."""

from django.contrib import admin
from django.utils.html import format_html

from demo_shop.shop.models import Product
from visual_reco.admin import VisualRecoAdminMixin


@admin.register(Product)
class ProductAdmin(VisualRecoAdminMixin, admin.ModelAdmin):
    """Products, with the embedding status column, filter and reindex action."""

    list_display = ["thumbnail", "name", "category", "price", "in_stock"]
    list_filter = ["category", "in_stock"]
    search_fields = ["name", "sku"]

    @admin.display(description="Photo")
    def thumbnail(self, obj: Product) -> str:
        """A small preview of the product photo."""
        if not obj.image:
            return "-"
        return format_html('<img src="{}" style="height:48px">', obj.image.url)
