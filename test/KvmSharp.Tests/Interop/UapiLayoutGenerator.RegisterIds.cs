using System.Globalization;
using System.Reflection;
using System.Runtime.CompilerServices;
using KvmSharp.Interop;
using KvmSharp.Registers;

namespace KvmSharp.Tests.Interop;

// Register ids: every [UapiValue] constant, static field and id factory of an architecture's id
// classes, compared with the uapi expression the attribute names.
internal static partial class UapiLayoutGenerator
{
    /// <summary>An id factory's arguments are probed from 0 up to this; a factory accepting it has no range.</summary>
    public const int ArgumentProbeLimit = 1024;

    /// <summary>The classes holding an architecture's ONE_REG ids and the uapi constants they are built from, and its other uapi constants (arm64: the vGIC's).</summary>
    public static IReadOnlyList<Type> IdClasses(string arch) => arch switch
    {
        "x86_64" => [], // KvmSharp moves no x86 register with ONE_REG
        "arm64" => [typeof(Arm64RegisterIds), typeof(KvmSharp.Interop.Arm64.ArmVgicUapi)],
        "s390x" => [typeof(S390xRegisterIds)],
        _ => throw new ArgumentOutOfRangeException(nameof(arch), arch, "Unknown architecture."),
    };

    /// <summary>
    /// The members of an id class that hold or make an id: static <c>ulong</c> fields (constants
    /// included) and properties, and the id factories (static methods of <c>int</c> parameters returning <c>ulong</c>).
    /// </summary>
    public static IEnumerable<MemberInfo> IdMembers(Type holder)
    {
        const BindingFlags flags = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static | BindingFlags.DeclaredOnly;
        return holder.GetFields(flags).Where(f => f.FieldType == typeof(ulong)).Cast<MemberInfo>()
            .Concat(holder.GetProperties(flags).Where(p => p.PropertyType == typeof(ulong)))
            .Concat(holder.GetMethods(flags).Where(IsIdFactory))
            .Where(m => !m.IsDefined(typeof(CompilerGeneratedAttribute)))
            .OrderBy(m => m.MetadataToken);
    }

    public static bool IsIdFactory(MethodInfo method) =>
        method.ReturnType == typeof(ulong) && method.GetParameters() is { Length: > 0 } parameters
        && parameters.All(p => p.ParameterType == typeof(int));

    private static void AddValueChecks(Type holder, List<LayoutCheck> checks)
    {
        foreach (var member in IdMembers(holder))
        {
            // A member without [UapiValue] is reported by UapiLayoutGuardTests, not skipped silently.
            if (member.GetCustomAttribute<UapiValueAttribute>() is not { } uapi)
                continue;
            if (member is MethodInfo factory)
            {
                foreach (var args in Arguments(factory))
                {
                    var boxed = args.Cast<object>().ToArray();
                    var expression = string.Format(CultureInfo.InvariantCulture, uapi.Expression, boxed);
                    checks.Add(new(member, $"({expression})", Hex((ulong)factory.Invoke(null, boxed)!), args));
                }
            }
            else
            {
                var value = member is FieldInfo field ? field.GetValue(null) : ((PropertyInfo)member).GetValue(null);
                checks.Add(new(member, $"({uapi.Expression})", Hex((ulong)value!)));
            }
        }
    }

    /// <summary>
    /// The argument lists an id factory is checked with: each argument over every value the factory
    /// accepts (<see cref="AcceptedMaximum"/>) while the others are all 0 and all at their maximum. For
    /// a factory of one parameter that is its whole domain; for <c>SystemRegister</c> (op0, op1, CRn,
    /// CRm, op2) it is 96 of the 65,536 encodings: every value of each field, next to fields all clear
    /// and all set. (All 65,536 would be 13 MB of C and seconds of gcc for a shift-and-or.)
    /// </summary>
    public static IReadOnlyList<int[]> Arguments(MethodInfo factory)
    {
        var maxima = Enumerable.Range(0, factory.GetParameters().Length).Select(i => AcceptedMaximum(factory, i)).ToArray();
        var lists = new List<int[]>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var baseline in (int[][])[new int[maxima.Length], maxima])
        {
            for (int i = 0; i < maxima.Length; i++)
            {
                for (int v = 0; v <= maxima[i]; v++)
                {
                    int[] args = [.. baseline];
                    args[i] = v;
                    if (seen.Add(string.Join(",", args)))
                        lists.Add(args);
                }
            }
        }
        return lists;
    }

    /// <summary>
    /// The largest value argument <paramref name="index"/> of an id factory accepts (the others 0):
    /// every value from 0 to it must be accepted, and the next refused with ArgumentOutOfRangeException.
    /// </summary>
    public static int AcceptedMaximum(MethodInfo factory, int index)
    {
        var args = new object[factory.GetParameters().Length];
        Array.Fill(args, 0);
        for (int v = 0; v < ArgumentProbeLimit; v++)
        {
            args[index] = v;
            if (!Accepts(factory, args))
            {
                return v > 0 ? v - 1 : throw new InvalidOperationException(
                    $"{Describe(factory)} refuses 0 as argument {index} (with the others 0): the layout tests probe id factories from 0.");
            }
        }
        throw new InvalidOperationException(
            $"{Describe(factory)} accepts argument {index} up to {ArgumentProbeLimit}: an id factory must refuse what is out of its range.");
    }

    public static bool Accepts(MethodInfo factory, object[] args)
    {
        try
        {
            factory.Invoke(null, args);
            return true;
        }
        catch (TargetInvocationException e) when (e.InnerException is ArgumentOutOfRangeException)
        {
            return false;
        }
    }

    public static string Hex(ulong value) => $"0x{value:X16}ull";
}
