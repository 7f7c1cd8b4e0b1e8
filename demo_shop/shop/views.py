"""Pages of the demo shop."""

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from demo_shop.shop.models import Product


def product_list(request: HttpRequest) -> HttpResponse:
    """All products, 48 a page, optionally one category."""
    products = Product.objects.all()
    category = request.GET.get("category")
    if category:
        products = products.filter(category=category)
    page = Paginator(products, 48).get_page(request.GET.get("page"))
    categories = Product.objects.order_by("category").values_list("category", flat=True).distinct()
    return render(request, "shop/product_list.html",
                  {"page": page, "categories": categories, "category": category})


def product_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One product, with visually similar products below it."""
    product = get_object_or_404(Product, pk=pk)
    return render(request, "shop/product_detail.html", {"product": product})
