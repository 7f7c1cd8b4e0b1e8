"""The demo shop's Product: a plain Django model plus one ImageEmbeddingField."""

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
