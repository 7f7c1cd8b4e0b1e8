"""Admin of the demo shop."""

from django.contrib import admin
from django.utils.html import format_html

from demo_shop.shop.models import Product, ProductImage
from visual_reco.admin import VisualRecoAdminMixin, VisualRecoInlineMixin


class ProductImageInline(VisualRecoInlineMixin, admin.TabularInline):
    """The product's gallery, each photo with its embedding status."""

    model = ProductImage
    extra = 0
    fields = ["preview", "view", "position", "image"]
    readonly_fields = ["preview"]

    @admin.display(description="Photo")
    def preview(self, obj: ProductImage) -> str:
        """A small preview of the photo."""
        if not obj.pk or not obj.image:
            return "-"
        return format_html('<img src="{}" style="height:48px">', obj.image.url)


@admin.register(Product)
class ProductAdmin(VisualRecoAdminMixin, admin.ModelAdmin):
    """Products, with the embedding status column (the product's photo and its gallery's),
    filter and reindex action, and the gallery inline."""

    inlines = [ProductImageInline]
    list_display = ["thumbnail", "name", "category", "price", "in_stock"]
    list_filter = ["category", "in_stock"]
    search_fields = ["name", "sku"]

    @admin.display(description="Photo")
    def thumbnail(self, obj: Product) -> str:
        """A small preview of the product photo."""
        if not obj.image:
            return "-"
        return format_html('<img src="{}" style="height:48px">', obj.image.url)
