"""URLs of the visual_reco API: ``path("api/visual-reco/", include("visual_reco.api.urls"))``."""

from django.urls import path

from visual_reco.api.views import (
    EventsView,
    PhotoSearchView,
    PickedForYouView,
    SimilarProductsView,
)

app_name = "visual_reco"

urlpatterns = [
    path("products/<str:pk>/similar/", SimilarProductsView.as_view(), name="similar"),
    path("picked-for-you/", PickedForYouView.as_view(), name="picked-for-you"),
    path("search/", PhotoSearchView.as_view(), name="search"),
    path("events/", EventsView.as_view(), name="events"),
]
