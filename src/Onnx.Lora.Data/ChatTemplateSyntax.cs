namespace Onnx.Lora.Data;

/// <summary>The syntax tree <see cref="ChatTemplateParser"/> builds and <see cref="ChatTemplateRenderer"/> walks; positions are char offsets in the template.</summary>
internal static class ChatTemplateSyntax
{
internal abstract record TemplateNode(int Position);

internal sealed record TextNode(int Position, string Text) : TemplateNode(Position);

internal sealed record OutputNode(int Position, Expr Value) : TemplateNode(Position);

internal sealed record IfNode(int Position, List<(Expr Condition, List<TemplateNode> Body)> Branches, List<TemplateNode>? Else) : TemplateNode(Position);

internal sealed record ForNode(int Position, string[] Targets, Expr Iterable, List<TemplateNode> Body, List<TemplateNode>? Else) : TemplateNode(Position);

internal sealed record SetNode(int Position, string Target, string? Attribute, Expr Value) : TemplateNode(Position);

internal sealed record GenerationNode(int Position, List<TemplateNode> Body) : TemplateNode(Position);

internal abstract record Expr(int Position);

internal sealed record Literal(int Position, object? Value) : Expr(Position);

internal sealed record Name(int Position, string Identifier) : Expr(Position);

internal sealed record ListExpr(int Position, List<Expr> Items) : Expr(Position);

internal sealed record DictExpr(int Position, List<(Expr Key, Expr Value)> Items) : Expr(Position);

internal sealed record Attribute(int Position, Expr Target, string Member) : Expr(Position);

internal sealed record Index(int Position, Expr Target, Expr Key) : Expr(Position);

internal sealed record Slice(int Position, Expr Target, Expr? Start, Expr? Stop) : Expr(Position);

internal sealed record Call(int Position, Expr Target, List<Expr> Args, List<(string Name, Expr Value)> Kwargs) : Expr(Position);

internal sealed record Filter(int Position, Expr Target, string FilterName, List<Expr> Args) : Expr(Position);

internal sealed record Test(int Position, Expr Target, string TestName, bool Negated) : Expr(Position);

internal sealed record Unary(int Position, string Op, Expr Operand) : Expr(Position);

internal sealed record Binary(int Position, string Op, Expr Left, Expr Right) : Expr(Position);

internal sealed record Conditional(int Position, Expr Condition, Expr Then, Expr? Else) : Expr(Position);
}
