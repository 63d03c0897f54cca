using System.Reflection;

namespace Onnx.Lora.Trainer.Autodiff;

/// <summary>Gradient rules by (domain, op type).</summary>
public sealed class GradientRuleRegistry
{
    private static readonly Lazy<GradientRuleRegistry> s_default = new(CreateDefault);
    private readonly Dictionary<(string Domain, string OpType), IGradientRule> _rules = [];

    /// <summary>The registry holding every rule of this assembly.</summary>
    public static GradientRuleRegistry Default => s_default.Value;

    /// <summary>Every (domain, op type) that has a rule.</summary>
    public IEnumerable<(string Domain, string OpType)> Keys => _rules.Keys;

    /// <summary>Registers <paramref name="rule"/> for each of its op types (replacing earlier ones).</summary>
    public void Register(IGradientRule rule)
    {
        ArgumentNullException.ThrowIfNull(rule);
        foreach (string op in rule.OpTypes)
        {
            _rules[(Normalize(rule.Domain), op)] = rule;
        }
    }

    /// <summary>The rule for an op, or null.</summary>
    public IGradientRule? Find(string domain, string opType) =>
        _rules.GetValueOrDefault((Normalize(domain), opType));

    private static string Normalize(string domain) => domain == "ai.onnx" ? string.Empty : domain;

    private static GradientRuleRegistry CreateDefault()
    {
        var registry = new GradientRuleRegistry();
        foreach (Type t in typeof(GradientRuleRegistry).Assembly.GetTypes()
                     .Where(t => t is { IsAbstract: false, IsClass: true } && typeof(IGradientRule).IsAssignableFrom(t) && t.GetConstructor(Type.EmptyTypes) is not null)
                     .OrderBy(t => t.FullName, StringComparer.Ordinal))
        {
            registry.Register((IGradientRule)Activator.CreateInstance(t)!);
        }

        return registry;
    }
}
