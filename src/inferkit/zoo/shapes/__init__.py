"""The shapes model: a small trained SD 1.x-family model of coloured shapes, shipped with inferkit.

Prompts name a colour (red, green, blue, yellow, purple, orange), a shape (circle, square,
triangle) and a background (white, black): ``"a red circle on a white background"``.

Example:
    >>> import inferkit
    >>> model = inferkit.Model.load("inferkit:shapes")
    >>> result = model.infer("a red circle on a white background", seed=1, progress=False)
    >>> from inferkit.zoo.shapes.checker import judge
    >>> judge(result.images[0].image).color
    'red'

"""
