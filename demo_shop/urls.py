"""URLs of the demo shop."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView

from demo_shop.shop import views

urlpatterns = [
    path("", views.product_list, name="product-list"),
    path("products/<int:pk>/", views.product_detail, name="product-detail"),
    path("search/", views.photo_search, name="photo-search"),
    path("cart/", views.cart, name="cart"),
    path("cart/add/<int:pk>/", views.cart_add, name="cart-add"),
    path("cart/buy/", views.checkout, name="checkout"),
    path("cart/thanks/", views.thanks, name="thanks"),
    path("admin/", admin.site.urls),
    path("api/visual-reco/", include("visual_reco.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The demo has no web server in front of gunicorn, so Django serves photos and the
    # admin's CSS itself (a shop serves them from its web server or file storage).
    re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT}),
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT}),
]
