import uuid

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


class ItemImage(models.Model):
    """A gallery image of an item: a second embedded model, the child of a product."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="images")
    image = models.ImageField(upload_to="item-images/", blank=True)
    embedding = ImageEmbeddingField(source="image")

    objects = VisualQuerySet.as_manager()


class Photographed(models.Model):
    """An abstract base that carries an embedding field to its subclasses."""

    photo = models.ImageField(upload_to="looks/", blank=True)
    photo_embedding = ImageEmbeddingField(source="photo")

    class Meta:
        abstract = True


class Look(Photographed):
    """Two embedding fields: one inherited from the abstract base (the default), one own,
    without aspects (no colour column)."""

    name = models.CharField(max_length=100)
    detail = models.ImageField(upload_to="looks/", blank=True)
    detail_embedding = ImageEmbeddingField(source="detail", aspects=())

    objects = VisualQuerySet.as_manager()

    def __str__(self) -> str:
        return self.name


class Garment(models.Model):
    """A product whose photos are a gallery (`GarmentPhoto`): no embedding field of its own."""

    name = models.CharField(max_length=100)
    category = models.CharField(max_length=50, blank=True)
    style = models.CharField(max_length=50, blank=True)
    in_stock = models.BooleanField(default=True)

    objects = VisualQuerySet.as_manager()

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return f"/garments/{self.pk}/"


class GarmentPhoto(models.Model):
    """One photo of a garment; its embedding serves garment-level searches."""

    garment = models.ForeignKey(Garment, on_delete=models.CASCADE, related_name="photos")
    image = models.ImageField(upload_to="garments/", blank=True)
    embedding = ImageEmbeddingField(source="image", product="garment")

    def __str__(self) -> str:
        return f"{self.garment} photo {self.pk}"


class Kit(models.Model):
    """A product with a UUID primary key (the text index keys documents by the key as text)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    photo = models.ImageField(upload_to="kits/", blank=True)
    embedding = ImageEmbeddingField(source="photo", aspects=())

    objects = VisualQuerySet.as_manager()

    def __str__(self) -> str:
        return self.name
