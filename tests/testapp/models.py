from django.db import models

from visual_reco.fields import ImageEmbeddingField
from visual_reco.query import VisualQuerySet


class Item(models.Model):
    name = models.CharField(max_length=100)
    category = models.CharField(max_length=50, blank=True)
    in_stock = models.BooleanField(default=True)
    photo = models.ImageField(upload_to="items/", blank=True)
    embedding = ImageEmbeddingField(source="photo")

    objects = VisualQuerySet.as_manager()

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return f"/items/{self.pk}/"
