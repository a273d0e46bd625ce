// Types of requirements.mjs, for the TypeScript tests that import it.
export declare const ALLOW_MISSING: string;
export declare const PACKAGES: { name: string; tools: string[] }[];
export declare function searchPath(env?: Record<string, string | undefined>): string[];
export declare function hasTool(tool: string, dirs?: string[]): boolean;
export declare function missingPackages(has?: (tool: string) => boolean): string[];
export declare function aptLine(packages: string[]): string;
export declare function missingMessage(packages: string[]): string[];
