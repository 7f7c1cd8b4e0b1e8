"""Pages of the demo shop."""

import base64
import io
import uuid
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from demo_shop.shop.models import Product, ProductImage
from visual_reco import feedback
from visual_reco.api.views import model_value
from visual_reco.conf import reco_settings
from visual_reco.images import ImageError, open_image
from visual_reco.query_photos import SearchUnavailable
from visual_reco.search import search_by_photo
from visual_reco.text_search import TextQueryError


def product_list(request: HttpRequest) -> HttpResponse:
    """All products, 48 a page, optionally one category."""
    products = Product.objects.all()
    category = request.GET.get("category")
    if category:
        try:
            products = products.filter(category=model_value(Product._meta.get_field("category"),
                                                             category))
        except ValidationError as exc:
            return HttpResponseBadRequest(f"category: {' '.join(exc.messages)}")
    page = Paginator(products, 48).get_page(request.GET.get("page"))
    categories = Product.objects.order_by("category").values_list("category", flat=True).distinct()
    return render(request, "shop/product_list.html",
                  {"page": page, "categories": categories, "category": category})


# The gallery's embedding field: what product pages and photo search compare once the
# catalog has a gallery (`import_catalog` adds one), product by product.
GALLERY_FIELD = "embedding"


def _compared_field() -> str | None:
    """The gallery field when the catalog has gallery images, else the product's own."""
    return GALLERY_FIELD if ProductImage.objects.exists() else None


def product_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One product with its gallery, and the products that look like it below, compared
    photo by photo, ranked by the ``?mode=`` of the switch above them (a mode that
    ``ASPECT_MODES`` lacks shows ``DEFAULT_MODE``)."""
    product = get_object_or_404(Product, pk=pk)
    mode = request.GET.get("mode")
    if mode not in reco_settings.ASPECT_MODES:
        mode = reco_settings.DEFAULT_MODE
    gallery = list(product.images.all())
    return render(request, "shop/product_detail.html",
                  {"product": product, "mode": mode, "gallery": gallery,
                   "field": GALLERY_FIELD if gallery else None})


def _thumbnail_data_uri(data: bytes) -> str:
    image = open_image(io.BytesIO(data))
    image.thumbnail((360, 360))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def photo_search(request: HttpRequest) -> HttpResponse:
    """Search by photo, words or both: upload or snap a photo and/or type a few words ("red",
    a brand), see the products that look like it, that match them, or both."""
    context: dict = {"in_stock": request.POST.get("in_stock") == "on",
                     "same_category": request.POST.get("same_category") == "on",
                     "text": request.POST.get("text", "").strip()}
    upload = request.FILES.get("photo")
    if request.method == "POST" and upload is None and not context["text"]:
        context["error"] = "Choose a photo or type some words first."
    elif request.method == "POST":
        data = upload.read() if upload is not None else None
        try:
            found = search_by_photo(
                io.BytesIO(data) if data is not None else None, Product.objects.all(),
                limit=12, text=context["text"],
                filter_by_predicted_category=context["same_category"],
                filters={"in_stock": True} if context["in_stock"] else None,
                field=_compared_field())
            context.update(found=found, preview=_thumbnail_data_uri(data) if data else None,
                           searched_photo=data is not None)
        except (ImageError, SearchUnavailable, TextQueryError) as exc:
            context["error"] = str(exc)
    return render(request, "shop/photo_search.html", context)


# The cart lives in the session: {product pk (str): quantity}.
CART = "cart"


def _cart_lines(request: HttpRequest) -> list[dict]:
    """The cart's lines with their products (lines whose product is gone are dropped)."""
    quantities = request.session.get(CART, {})
    products = Product.objects.in_bulk([int(pk) for pk in quantities])
    return [{"product": product, "quantity": quantities[str(pk)],
             "total": product.price * quantities[str(pk)]} for pk, product in products.items()]


@require_POST
def cart_add(request: HttpRequest, pk: int) -> HttpResponse:
    """Put one of a product in the cart (one in stock; the page shows no button otherwise)."""
    product = get_object_or_404(Product, pk=pk)
    if not product.in_stock:
        return redirect(product)
    cart = request.session.get(CART, {})
    cart[str(product.pk)] = cart.get(str(product.pk), 0) + 1
    request.session[CART] = cart
    feedback.record(request, "add_to_cart", product, quantity=1, price=product.price)
    return redirect("cart")


def cart(request: HttpRequest) -> HttpResponse:
    """The cart, with a Buy button."""
    lines = _cart_lines(request)
    return render(request, "shop/cart.html",
                  {"lines": lines, "total": sum((line["total"] for line in lines), Decimal(0))})


@require_POST
def checkout(request: HttpRequest) -> HttpResponse:
    """Buy the cart: the demo takes no payment and stores no order; it records a purchase
    per line, whose event id is unique per order line: a line recorded again is stored once."""
    lines = _cart_lines(request)
    if not lines:
        return redirect("cart")
    order_id = uuid.uuid4().hex[:12]
    for line in lines:
        product = line["product"]
        feedback.record(request, "purchase", product, quantity=line["quantity"],
                        price=product.price, event_id=f"{order_id}:{product.pk}")
    request.session[CART] = {}
    request.session["last_order"] = {
        "id": order_id, "items": sum(line["quantity"] for line in lines),
        "total": str(sum((line["total"] for line in lines), Decimal(0)))}
    return redirect("thanks")


def thanks(request: HttpRequest) -> HttpResponse:
    """After Buy: the order's number and total."""
    return render(request, "shop/thanks.html", {"order": request.session.get("last_order")})
