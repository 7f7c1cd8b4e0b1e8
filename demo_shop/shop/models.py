"""The demo shop's Product (a plain Django model plus one ImageEmbeddingField on its main
photo) and its gallery, ProductImage: every photo of the product (Luma's ``main``, ``back``,
``alt1``, ...), each embedded, which the product page compares product to product."""

from django.db import models
from django.urls import reverse

from visual_reco.fields import ImageEmbeddingField
from visual_reco.query import VisualQuerySet


class Product(models.Model):
    """A product with one photo."""

    sku = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    category = models.CharField(max_length=120, blank=True, db_index=True)
    # The colour variants of one design share it (Luma's style code): VARIANT_FIELD.
    style = models.CharField(max_length=120, blank=True, db_index=True)
    price = models.DecimalField(max_digits=8, decimal_places=2, default=0)
    in_stock = models.BooleanField(default=True)
    image = models.ImageField(upload_to="products/", blank=True)
    image_embedding = ImageEmbeddingField(source="image")

    objects = VisualQuerySet.as_manager()

    class Meta:
        ordering = ["category", "name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("product-detail", args=[self.pk])


class ProductImage(models.Model):
    """One photo of a product's gallery, its main photo included; its embedding serves
    product-level searches (``field="embedding"``): each product once, by its best photo."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="images")
    # Luma's view name (main, back, alt1, ...); the gallery shows them in ``position`` order.
    view = models.CharField(max_length=40, blank=True)
    position = models.PositiveSmallIntegerField(default=0)
    image = models.ImageField(upload_to="products/gallery/")
    embedding = ImageEmbeddingField(source="image", product="product")

    class Meta:
        ordering = ["product", "position", "pk"]
        constraints = [models.UniqueConstraint(fields=["product", "view"],
                                               name="shop_productimage_one_per_view")]

    def __str__(self) -> str:
        return f"{self.product} ({self.view or self.position})"
