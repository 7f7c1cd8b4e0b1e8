"""URLs of the demo shop."""

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from demo_shop.shop import views

urlpatterns = [
    path("", views.product_list, name="product-list"),
    path("products/<int:pk>/", views.product_detail, name="product-detail"),
    path("search/", views.photo_search, name="photo-search"),
    path("admin/", admin.site.urls),
    path("api/visual-reco/", include("visual_reco.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    *static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT),
]
